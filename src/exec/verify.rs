//! Verification: runs each `verify_cmds` entry with `sh -c` in the workspace, one after the
//! other (all of them, even after a failure), logs them, and writes the runner-notes text the
//! next implementation prompt points the agent at. Called by the runner for verification steps.

use crate::exec::process::{
    self, seconds_text, CommandSpec, Exit, OutputSink, ProcessError, Stream,
};
use crate::exec::tail::{last_lines, TailBuffer};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Lines of a failed command's output put in the runner notes.
pub const NOTES_LINES: usize = 120;
/// Output of each stream kept in memory per command.
const STREAM_TAIL: usize = 256 * 1024;

/// The verification of one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyRequest {
    /// Commands, each run as `sh -c <cmd>`.
    pub cmds: Vec<String>,
    /// The workspace (worktree) they run in.
    pub cwd: PathBuf,
    /// Their complete environment.
    pub env: Vec<(String, String)>,
    /// Per-command timeout; `None` = none.
    pub timeout: Option<Duration>,
    /// SIGTERM → SIGKILL grace period.
    pub grace: Duration,
    /// Log file: `$ <cmd>`, its output and `[exit N]` are appended as they come.
    pub log: PathBuf,
}

/// How one command went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutcome {
    pub cmd: String,
    pub exit: Exit,
    pub duration: Duration,
    /// The end of its stdout.
    pub stdout_tail: String,
    /// The end of its stderr.
    pub stderr_tail: String,
}

impl CommandOutcome {
    /// Exit code 0.
    pub fn passed(&self) -> bool {
        self.exit.success()
    }
}

/// The whole verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyResult {
    /// Every command exited 0 (also true when there are none).
    pub passed: bool,
    pub commands: Vec<CommandOutcome>,
    /// On failure, the text for `runner-notes.txt`.
    pub runner_notes: Option<String>,
}

/// Why verification did not come to a verdict.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cancelled")]
    Cancelled,
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("cannot write {}: {source}", path.display())]
    Log {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("verification log task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Runs every command; `on_spawn` gets each command's process group id.
pub async fn run_verification(
    req: &VerifyRequest,
    cancel: &CancellationToken,
    mut on_spawn: impl FnMut(u32),
) -> Result<VerifyResult, VerifyError> {
    let mut commands = Vec::with_capacity(req.cmds.len());
    for cmd in &req.cmds {
        let outcome = run_one(req, cmd, cancel, &mut on_spawn).await?;
        if outcome.exit == Exit::Cancelled {
            return Err(VerifyError::Cancelled);
        }
        commands.push(outcome);
    }
    let passed = commands.iter().all(CommandOutcome::passed);
    let runner_notes = (!passed).then(|| runner_notes(&commands, req.timeout));
    Ok(VerifyResult {
        passed,
        commands,
        runner_notes,
    })
}

async fn run_one(
    req: &VerifyRequest,
    cmd: &str,
    cancel: &CancellationToken,
    on_spawn: &mut impl FnMut(u32),
) -> Result<CommandOutcome, VerifyError> {
    let (log_path, header) = (req.log.clone(), format!("$ {cmd}\n"));
    let sink = tokio::task::spawn_blocking(move || VerifySink::open(&log_path, &header))
        .await?
        .map_err(|source| log_error(&req.log, source))?;
    let spec = CommandSpec {
        program: "sh".into(),
        args: vec!["-c".into(), cmd.to_string()],
        cwd: req.cwd.clone(),
        env: req.env.clone(),
        timeout: req.timeout,
        grace: req.grace,
    };
    let started = Instant::now();
    let (exit, mut sink) = process::run(&spec, sink, cancel, on_spawn).await?;
    let duration = started.elapsed();
    let footer = format!("[{}]\n", exit_text(exit, req.timeout));
    let sink = tokio::task::spawn_blocking(move || sink.close(&footer).map(|_| sink))
        .await?
        .map_err(|source| log_error(&req.log, source))?;
    Ok(CommandOutcome {
        cmd: cmd.to_string(),
        exit,
        duration,
        stdout_tail: sink.stdout.last_lines(NOTES_LINES),
        stderr_tail: sink.stderr.last_lines(NOTES_LINES),
    })
}

fn log_error(path: &Path, source: io::Error) -> VerifyError {
    VerifyError::Log {
        path: path.to_path_buf(),
        source,
    }
}

fn exit_text(exit: Exit, timeout: Option<Duration>) -> String {
    match exit {
        Exit::Code(code) => format!("exit {code}"),
        Exit::Signal(sig) => format!("killed by signal {sig}"),
        Exit::TimedOut => format!(
            "timed out after {}",
            seconds_text(timeout.unwrap_or_default())
        ),
        Exit::Cancelled => "cancelled".into(),
    }
}

/// The runner-notes text for the failed commands of `commands`.
pub fn runner_notes(commands: &[CommandOutcome], timeout: Option<Duration>) -> String {
    let mut notes = String::from(
        "Runner detected failing verification.\n\n\
         Read this failure context carefully and fix it before doing new plan work:\n\n",
    );
    for c in commands.iter().filter(|c| !c.passed()) {
        notes.push_str(&format!(
            "--- FAILED: {} ({}) ---\n",
            c.cmd,
            exit_text(c.exit, timeout)
        ));
        let output = failure_output(&c.stdout_tail, &c.stderr_tail);
        let output = last_lines(&output, NOTES_LINES).trim_end_matches('\n');
        if !output.is_empty() {
            notes.push_str(output);
            notes.push('\n');
        }
        notes.push('\n');
    }
    notes
}

/// stdout, or stderr, or both with a separator.
fn failure_output(stdout: &str, stderr: &str) -> String {
    match (stdout.trim().is_empty(), stderr.trim().is_empty()) {
        (_, true) => stdout.to_string(),
        (true, false) => stderr.to_string(),
        (false, false) => format!(
            "{}\n\n--- STDERR ---\n{stderr}",
            stdout.trim_end_matches('\n')
        ),
    }
}

/// Writes one command's output to the log as it comes and keeps the ends of both streams.
struct VerifySink {
    log: File,
    last_byte: Option<u8>,
    stdout: TailBuffer,
    stderr: TailBuffer,
}

impl VerifySink {
    fn open(path: &Path, header: &str) -> io::Result<Self> {
        let mut log = OpenOptions::new().create(true).append(true).open(path)?;
        log.write_all(header.as_bytes())?;
        Ok(VerifySink {
            log,
            last_byte: None,
            stdout: TailBuffer::new(STREAM_TAIL),
            stderr: TailBuffer::new(STREAM_TAIL),
        })
    }

    fn close(&mut self, footer: &str) -> io::Result<()> {
        if self.last_byte.is_some_and(|b| b != b'\n') {
            self.log.write_all(b"\n")?;
        }
        self.log.write_all(footer.as_bytes())
    }
}

impl OutputSink for VerifySink {
    fn write(&mut self, stream: Stream, data: &[u8]) -> io::Result<()> {
        // Unbuffered: each chunk is visible to the live tail at once.
        self.log.write_all(data)?;
        self.last_byte = data.last().copied().or(self.last_byte);
        match stream {
            Stream::Stdout => self.stdout.push(data),
            Stream::Stderr => self.stderr.push(data),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
