//! Runs the agent command for one implementation or review step: argv + the prompt as last
//! argument, output to the step's log files, retries with backoff, and a result the runner
//! turns into a step outcome. Called by the runner actor.

use crate::domain::api_limit::{classify as classify_api, ApiFailure};
use crate::domain::completion::COMPLETION_TOKEN;
use crate::domain::status::{AgentOutput, CompletionMode};
use crate::domain::usage::StepUsage;
use crate::exec::agent_output::AgentSink;
use crate::exec::process::{self, seconds_text, CommandSpec, Exit, ProcessError};
use backon::{BackoffBuilder, ConstantBuilder, ExponentialBuilder};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Lines of extracted text in the tail file.
pub const TAIL_LINES: usize = 200;
/// Transient failures allowed in one step.
pub const MAX_TRANSIENT_FAILURES: u32 = 5;
/// Longest backoff after a transient failure.
pub const MAX_TRANSIENT_BACKOFF: Duration = Duration::from_secs(120);
/// Lines of stderr reported on failure.
const STDERR_TAIL_LINES: usize = 40;

/// Files of one agent step (`iter-NN-<slug>.log`, `.jsonl`, `.tail.txt`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentFiles {
    /// Extracted text, appended as it arrives (never truncated here).
    pub log: PathBuf,
    /// Raw NDJSON lines (stream-json output only), appended.
    pub jsonl: PathBuf,
    /// The last [`TAIL_LINES`] lines of the final attempt's text, rewritten after each attempt.
    pub tail: PathBuf,
}

/// How failed attempts are retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Extra attempts after non-transient failures (`claude_retries`).
    pub retries: u32,
    /// Flat backoff, and the base of the doubling transient backoff (`claude_retry_backoff_sec`).
    pub backoff: Duration,
}

impl RetryPolicy {
    /// The pauses after transient failures: doubling from `backoff` up to
    /// [`MAX_TRANSIENT_BACKOFF`], one fewer than [`MAX_TRANSIENT_FAILURES`].
    fn transient_pauses(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::new()
            .with_min_delay(self.backoff)
            .with_max_delay(MAX_TRANSIENT_BACKOFF)
            .with_max_times(MAX_TRANSIENT_FAILURES as usize - 1)
            .build()
    }

    /// The pauses after other failures: `backoff` each, `retries` of them.
    fn other_pauses(&self) -> impl Iterator<Item = Duration> {
        ConstantBuilder::new()
            .with_delay(self.backoff)
            .with_max_times(self.retries as usize)
            .build()
    }
}

/// One agent step to run.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRequest {
    /// The command (see `RunConfig::agent_argv`); the prompt is appended.
    pub argv: Vec<String>,
    pub prompt: String,
    pub cwd: PathBuf,
    /// The agent's complete environment.
    pub env: Vec<(String, String)>,
    pub output: AgentOutput,
    pub completion_mode: CompletionMode,
    /// Per-attempt timeout; `None` = none.
    pub timeout: Option<Duration>,
    /// SIGTERM → SIGKILL grace period.
    pub grace: Duration,
    pub retry: RetryPolicy,
    pub files: AgentFiles,
}

/// What one agent step came to.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentResult {
    /// How the last attempt ended; `None` if it could not start.
    pub exit: Option<Exit>,
    /// Attempts made (1 = no retry).
    pub attempts: u32,
    /// Bytes of extracted text of the last attempt.
    pub output_bytes: u64,
    /// The last [`TAIL_LINES`] lines of the last attempt's text (also in the tail file).
    pub tail: String,
    /// The completion token was found (success only) under the request's completion mode.
    pub complete: bool,
    /// Why the step failed (`None` = success), e.g. `process failed with exit code 1`.
    pub failure: Option<String>,
    /// The end of the last attempt's stderr.
    pub stderr_tail: String,
    /// What the attempts' `result` events reported, added up; `None` when none printed one.
    pub usage: Option<StepUsage>,
    /// The agent API pushed back (rate limit, overload, usage limit): the last attempt's
    /// failure, not retried here; the step goes back to the queue.
    pub pressure: Option<ApiFailure>,
}

impl AgentResult {
    /// The last attempt exited 0.
    pub fn succeeded(&self) -> bool {
        self.failure.is_none()
    }
}

/// Failures of loopd itself (not of the agent).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent command is empty")]
    EmptyCommand,
    #[error("cannot write {}: {source}", path.display())]
    Files {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Output(ProcessError),
    #[error("agent output task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// How one attempt failed, for the retry decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Cancelled,
    Transient,
    Other,
}

/// One attempt's outcome: the result so far and how it failed, if it did.
type Attempt = (AgentResult, Option<Failure>);

/// Runs the agent until it succeeds, fails for good, or is cancelled. `on_spawn` gets each
/// attempt's process group id.
pub async fn run_agent(
    req: &AgentRequest,
    cancel: &CancellationToken,
    mut on_spawn: impl FnMut(u32),
) -> Result<AgentResult, AgentError> {
    if req.argv.is_empty() {
        return Err(AgentError::EmptyCommand);
    }
    // Transient API errors and other failures each have their own budget of pauses.
    let (mut transient, mut other) = (req.retry.transient_pauses(), req.retry.other_pauses());
    let mut attempts = 0;
    let mut spent: Option<StepUsage> = None;
    loop {
        attempts += 1;
        if attempts > 1 {
            append(
                &req.files.log,
                &format!("\n--- retry {} ---\n", attempts - 1),
            )
            .await?;
        }
        let (mut result, failure) = run_attempt(req, cancel, &mut on_spawn).await?;
        result.attempts = attempts;
        spent = match (spent.take(), result.usage.take()) {
            (Some(before), Some(now)) => Some(before.then(now)),
            (before, now) => now.or(before),
        };
        result.usage = spent.clone();
        if failure.is_some_and(|f| f != Failure::Cancelled) {
            let text = format!("{}\n{}", result.tail, result.stderr_tail);
            let api = classify_api(&text);
            if api.is_pressure() {
                // Not this step's fault, and not for this worker to wait out alone.
                result.pressure = Some(api);
                return Ok(result);
            }
        }
        let wait = match failure {
            None | Some(Failure::Cancelled) => return Ok(result),
            Some(Failure::Transient) => transient.next(),
            Some(Failure::Other) => other.next(),
        };
        let Some(wait) = wait else {
            return Ok(result);
        };
        tracing::warn!(attempt = attempts, failure = ?result.failure, stderr = %result.stderr_tail, "agent attempt failed; retrying in {wait:?}");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cancel.cancelled() => {
                result.failure = Some("cancelled".into());
                result.complete = false;
                return Ok(result);
            }
        }
    }
}

async fn run_attempt(
    req: &AgentRequest,
    cancel: &CancellationToken,
    on_spawn: &mut impl FnMut(u32),
) -> Result<Attempt, AgentError> {
    let files = req.files.clone();
    let sink = AgentSink::new(req.output, &files.log, &files.jsonl).map_err(|source| {
        AgentError::Files {
            path: files.log.clone(),
            source,
        }
    })?;
    let mut args = req.argv[1..].to_vec();
    args.push(req.prompt.clone());
    let spec = CommandSpec {
        program: req.argv[0].clone(),
        args,
        cwd: req.cwd.clone(),
        env: req.env.clone(),
        timeout: req.timeout,
        grace: req.grace,
    };
    match process::run(&spec, sink, cancel, on_spawn).await {
        Ok((exit, sink)) => finish_attempt(req, exit, sink).await,
        Err(e @ ProcessError::Output { .. }) | Err(e @ ProcessError::Wait { .. }) => {
            Err(AgentError::Output(e))
        }
        Err(ProcessError::NotFound { program }) => {
            not_started(req, format!("agent command not found: {program}")).await
        }
        Err(e) => not_started(req, e.to_string()).await,
    }
}

async fn not_started(req: &AgentRequest, reason: String) -> Result<Attempt, AgentError> {
    write_file(&req.files.tail, String::new()).await?;
    Ok((empty_result(Some(reason)), Some(Failure::Other)))
}

fn empty_result(failure: Option<String>) -> AgentResult {
    AgentResult {
        exit: None,
        attempts: 0,
        output_bytes: 0,
        tail: String::new(),
        complete: false,
        failure,
        stderr_tail: String::new(),
        usage: None,
        pressure: None,
    }
}

async fn finish_attempt(
    req: &AgentRequest,
    exit: Exit,
    sink: AgentSink,
) -> Result<Attempt, AgentError> {
    let log = req.files.log.clone();
    let sink = tokio::task::spawn_blocking(move || {
        let mut sink = sink;
        sink.finish().map(|_| sink)
    })
    .await?
    .map_err(|source| AgentError::Files { path: log, source })?;
    let (failure, reason) = match classify(exit, sink.transient, req.timeout) {
        Some((kind, reason)) => (Some(kind), Some(reason)),
        None => (None, None),
    };
    let complete = failure.is_none()
        && match req.completion_mode {
            CompletionMode::Trailing => sink.text.last_line_is(COMPLETION_TOKEN),
            CompletionMode::Exact => sink
                .small_output()
                .is_some_and(|o| o.trim() == COMPLETION_TOKEN),
        };
    let tail = sink.text.last_lines(TAIL_LINES);
    write_file(&req.files.tail, tail.clone()).await?;
    let result = AgentResult {
        exit: Some(exit),
        output_bytes: sink.text.total_bytes(),
        tail,
        complete,
        stderr_tail: sink.stderr.last_lines(STDERR_TAIL_LINES),
        usage: sink.usage.clone(),
        ..empty_result(reason)
    };
    Ok((result, failure))
}

fn classify(exit: Exit, transient: bool, timeout: Option<Duration>) -> Option<(Failure, String)> {
    let other = |reason: String| Some((Failure::Other, reason));
    match exit {
        Exit::Code(0) => None,
        Exit::Code(code) if transient => Some((
            Failure::Transient,
            format!("transient API error (exit code {code})"),
        )),
        Exit::Code(code) => other(format!("process failed with exit code {code}")),
        Exit::Signal(sig) => other(format!("process killed by signal {sig}")),
        Exit::TimedOut => other(format!(
            "timeout after {}",
            seconds_text(timeout.unwrap_or_default())
        )),
        Exit::Cancelled => Some((Failure::Cancelled, "cancelled".into())),
    }
}

async fn append(path: &Path, text: &str) -> Result<(), AgentError> {
    let (path, text) = (path.to_path_buf(), text.to_string());
    tokio::task::spawn_blocking(move || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|source| AgentError::Files { path, source })
    })
    .await?
}

async fn write_file(path: &Path, text: String) -> Result<(), AgentError> {
    tokio::fs::write(path, text)
        .await
        .map_err(|source| AgentError::Files {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests;
