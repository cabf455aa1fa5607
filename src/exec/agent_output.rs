//! The agent's output on its way to disk: decides text vs stream-json, extracts the assistant
//! text from NDJSON lines, appends it to the step's `.log` (raw lines to `.jsonl`), and keeps
//! only bounded tails in memory. Used by the agent runner (`agent.rs`) only; it runs on the
//! blocking thread of [`process::run`](crate::exec::process::run).

use crate::domain::status::AgentOutput;
use crate::domain::usage::{parse_result_event, StepUsage};
use crate::exec::process::{OutputSink, Stream};
use crate::exec::tail::TailBuffer;
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// Longest NDJSON line parsed; longer lines still go to the `.jsonl` file, unparsed.
const LINE_CAP: usize = 8 * 1024 * 1024;
/// Extracted text kept in memory for the tail file and trailing completion detection.
const TEXT_TAIL: usize = 1024 * 1024;
/// stderr kept in memory for failure reports.
const STDERR_TAIL: usize = 64 * 1024;
/// Output kept whole for `exact` completion detection; a longer output is never exactly the token.
const SMALL_OUTPUT: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Undecided,
    Text,
    Json,
}

/// The assistant text carried by one stream-json event: a whole message's text blocks (joined
/// with ""), or a text delta (`stream_event` wrapper or raw `content_block_delta`).
pub fn extract_text(event: &Value) -> Option<String> {
    extract(event).map(|(_, text)| text)
}

/// (is a whole message, text)
fn extract(event: &Value) -> Option<(bool, String)> {
    match event.get("type")?.as_str()? {
        "assistant" => {
            let blocks = event.get("message")?.get("content")?.as_array()?;
            let texts: Vec<&str> = blocks
                .iter()
                .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect();
            (!texts.is_empty()).then(|| (true, texts.concat()))
        }
        "stream_event" => delta_text(event.get("event")?).map(|t| (false, t)),
        "content_block_delta" => delta_text(event).map(|t| (false, t)),
        _ => None,
    }
}

fn delta_text(event: &Value) -> Option<String> {
    if event.get("type")?.as_str()? != "content_block_delta" {
        return None;
    }
    let delta = event.get("delta")?;
    if delta.get("type")?.as_str()? != "text_delta" {
        return None;
    }
    Some(delta.get("text")?.as_str()?.to_string())
}

fn looks_like_stream_json(line: &[u8]) -> bool {
    matches!(serde_json::from_slice::<Value>(line.trim_ascii()), Ok(Value::Object(m)) if m.contains_key("type"))
}

/// A chunk of agent text that means the API failed transiently.
fn is_transient_text(text: &str) -> bool {
    text.contains("overloaded") || text.lines().any(|l| l.starts_with("API Error: 5"))
}

/// Output sink of one agent attempt.
pub(crate) struct AgentSink {
    mode: Mode,
    log: BufWriter<File>,
    jsonl_path: PathBuf,
    jsonl: Option<BufWriter<File>>,
    /// Undecided: everything so far; Json: the current unfinished line.
    partial: Vec<u8>,
    /// The current NDJSON line passed LINE_CAP and streams straight to the file.
    overlong: bool,
    last_byte: Option<u8>,
    pub(crate) text: TailBuffer,
    pub(crate) stderr: TailBuffer,
    small: Option<Vec<u8>>,
    pub(crate) transient: bool,
    /// What the agent's final `result` event reported (stream-json and json output only).
    pub(crate) usage: Option<StepUsage>,
}

fn open_append(path: &Path) -> io::Result<BufWriter<File>> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    Ok(BufWriter::new(file))
}

impl AgentSink {
    /// Opens (appending) the log file; the `.jsonl` file is opened on the first NDJSON line.
    pub(crate) fn new(output: AgentOutput, log: &Path, jsonl: &Path) -> io::Result<Self> {
        Ok(AgentSink {
            mode: match output {
                AgentOutput::Auto => Mode::Undecided,
                AgentOutput::Text => Mode::Text,
                AgentOutput::StreamJson => Mode::Json,
            },
            log: open_append(log)?,
            jsonl_path: jsonl.to_path_buf(),
            jsonl: None,
            partial: Vec::new(),
            overlong: false,
            last_byte: None,
            text: TailBuffer::new(TEXT_TAIL),
            stderr: TailBuffer::new(STDERR_TAIL),
            small: Some(Vec::new()),
            transient: false,
            usage: None,
        })
    }

    /// The whole extracted text, while it is small enough to have been kept.
    pub(crate) fn small_output(&self) -> Option<String> {
        self.small
            .as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    /// Handles what is left at end of output (an unterminated last line) and flushes.
    pub(crate) fn finish(&mut self) -> io::Result<()> {
        if self.mode == Mode::Undecided && !self.partial.is_empty() {
            self.mode = if looks_like_stream_json(&self.partial) {
                Mode::Json
            } else {
                Mode::Text
            };
            let pending = std::mem::take(&mut self.partial);
            self.stdout(&pending)?;
        }
        if self.mode == Mode::Json {
            if self.overlong {
                self.jsonl()?.write_all(b"\n")?;
            } else if !self.partial.is_empty() {
                let line = std::mem::take(&mut self.partial);
                self.json_line(&line)?;
            }
        }
        self.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.log.flush()?;
        if let Some(jsonl) = &mut self.jsonl {
            jsonl.flush()?;
        }
        Ok(())
    }

    fn stdout(&mut self, data: &[u8]) -> io::Result<()> {
        match self.mode {
            Mode::Text => self.emit(data),
            Mode::Json => self.json_bytes(data),
            Mode::Undecided => {
                self.partial.extend_from_slice(data);
                self.detect()
            }
        }
    }

    /// Auto mode: the first non-blank line decides.
    fn detect(&mut self) -> io::Result<()> {
        let first = self
            .partial
            .split_inclusive(|b| *b == b'\n')
            .filter(|l| l.ends_with(b"\n"))
            .find(|l| !l.trim_ascii().is_empty());
        let mode = match first {
            Some(line) if looks_like_stream_json(line) => Mode::Json,
            Some(_) => Mode::Text,
            None if self.partial.len() > LINE_CAP => Mode::Text,
            None => return Ok(()),
        };
        self.mode = mode;
        let pending = std::mem::take(&mut self.partial);
        self.stdout(&pending)
    }

    fn json_bytes(&mut self, mut data: &[u8]) -> io::Result<()> {
        while let Some(pos) = data.iter().position(|b| *b == b'\n') {
            let (line, rest) = (&data[..pos], &data[pos + 1..]);
            data = rest;
            if self.overlong {
                let jsonl = self.jsonl()?;
                jsonl.write_all(line)?;
                jsonl.write_all(b"\n")?;
                self.overlong = false;
            } else if self.partial.is_empty() {
                self.json_line(line)?;
            } else {
                self.partial.extend_from_slice(line);
                let whole = std::mem::take(&mut self.partial);
                self.json_line(&whole)?;
            }
        }
        if self.overlong {
            self.jsonl()?.write_all(data)?;
        } else {
            self.partial.extend_from_slice(data);
            if self.partial.len() > LINE_CAP {
                let head = std::mem::take(&mut self.partial);
                self.jsonl()?.write_all(&head)?;
                self.overlong = true;
            }
        }
        Ok(())
    }

    fn json_line(&mut self, line: &[u8]) -> io::Result<()> {
        if line.trim_ascii().is_empty() {
            return Ok(());
        }
        let jsonl = self.jsonl()?;
        jsonl.write_all(line)?;
        jsonl.write_all(b"\n")?;
        let Ok(event) = serde_json::from_slice::<Value>(line) else {
            return Ok(());
        };
        if let Some(usage) = parse_result_event(&event) {
            self.usage = Some(usage);
        }
        if let Some((whole_message, text)) = extract(&event) {
            // Whole messages are separate turns: keep each on its own line, so a token sent as
            // its own message is still the last line.
            if whole_message && self.last_byte.is_some_and(|b| b != b'\n') {
                self.emit(b"\n")?;
            }
            self.emit(text.as_bytes())?;
        }
        Ok(())
    }

    fn jsonl(&mut self) -> io::Result<&mut BufWriter<File>> {
        if self.jsonl.is_none() {
            self.jsonl = Some(open_append(&self.jsonl_path)?);
        }
        self.jsonl
            .as_mut()
            .ok_or_else(|| io::Error::other("jsonl file not open"))
    }

    /// One piece of extracted text: to the log, the tail, and the detectors.
    fn emit(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.log.write_all(data)?;
        self.text.push(data);
        self.last_byte = data.last().copied();
        if let Some(small) = &mut self.small {
            if small.len() + data.len() > SMALL_OUTPUT {
                self.small = None;
            } else {
                small.extend_from_slice(data);
            }
        }
        if !self.transient && is_transient_text(&String::from_utf8_lossy(data)) {
            self.transient = true;
        }
        Ok(())
    }
}

impl OutputSink for AgentSink {
    fn write(&mut self, stream: Stream, data: &[u8]) -> io::Result<()> {
        match stream {
            Stream::Stderr => self.stderr.push(data),
            Stream::Stdout => self.stdout(data)?,
        }
        // Flushed per chunk: the live tail reads the log file while the agent runs.
        self.flush()
    }
}

#[cfg(test)]
mod tests;
