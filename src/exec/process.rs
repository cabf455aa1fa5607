//! Runs one command in its own process group and streams its output. Owns the child's whole
//! life: spawn (clean environment, stdin null, pipes), output pumping into a caller's sink,
//! timeout and cancellation (SIGTERM to the group, a grace period, SIGKILL to the group), and
//! reaping. Called by the agent runner and the verifier; nothing else spawns step processes.

use crate::exec::group::{signal_group, stop_group, GroupGuard};
use nix::errno::Errno;
use nix::sys::signal::Signal as NixSignal;
use nix::unistd::Pid;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Grace period between SIGTERM and SIGKILL when callers have no better value.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// How long the output pipes may stay open after the group is gone (a process that left the
/// group may still hold them).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

const READ_BUFFER: usize = 64 * 1024;
/// Chunks in flight between the pipes and the sink; bounds memory when the sink is slow.
const CHANNEL_DEPTH: usize = 16;

/// One command to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    /// Program, looked up on the `PATH` given in `env` when it has no `/`.
    pub program: String,
    /// Arguments after the program.
    pub args: Vec<String>,
    /// Working directory; must exist.
    pub cwd: PathBuf,
    /// The complete environment of the child (nothing is inherited).
    pub env: Vec<(String, String)>,
    /// Wall-clock limit; `None` = none.
    pub timeout: Option<Duration>,
    /// Time between SIGTERM and SIGKILL when the group is stopped.
    pub grace: Duration,
}

/// Which pipe a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal (not by us).
    Signal(i32),
    /// It ran past its timeout and its group was stopped.
    TimedOut,
    /// It was cancelled and its group was stopped.
    Cancelled,
}

impl Exit {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        *self == Exit::Code(0)
    }
}

/// Receives the output as it comes, on a blocking thread (so it may write files).
pub trait OutputSink: Send + 'static {
    /// Takes one chunk of one stream. An error stops delivery to this sink; the command runs on
    /// and [`run`] reports the error when it ends.
    fn write(&mut self, stream: Stream, data: &[u8]) -> io::Result<()>;
}

impl<F> OutputSink for F
where
    F: FnMut(Stream, &[u8]) -> io::Result<()> + Send + 'static,
{
    fn write(&mut self, stream: Stream, data: &[u8]) -> io::Result<()> {
        self(stream, data)
    }
}

/// Why a command could not be run to its end.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The program does not exist (on the child's `PATH`).
    #[error("command not found: {program}")]
    NotFound { program: String },
    /// The working directory does not exist.
    #[error("working directory {} does not exist", path.display())]
    MissingCwd { path: PathBuf },
    /// Any other spawn failure (permissions, not executable, …).
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    /// Waiting for the child failed.
    #[error("waiting for {program} failed: {source}")]
    Wait {
        program: String,
        #[source]
        source: io::Error,
    },
    /// The sink failed to take the output.
    #[error("handling the output of {program} failed: {source}")]
    Output {
        program: String,
        #[source]
        source: io::Error,
    },
}

/// Runs `spec` to its end, delivering its output to `sink`. `on_spawn` gets the process group
/// id (= the child's pid) right after the spawn. Once `cancel` fired nothing is started, and a
/// command killed by a signal after it fired counts as cancelled. Returns after the child is reaped and its
/// output delivered; any process left in its group is killed then, so a command never
/// outlives its call.
pub async fn run<S: OutputSink>(
    spec: &CommandSpec,
    sink: S,
    cancel: &CancellationToken,
    on_spawn: impl FnOnce(u32),
) -> Result<(Exit, S), ProcessError> {
    // Cancelled already (a lost lease between two verify commands): nothing starts.
    if cancel.is_cancelled() {
        return Ok((Exit::Cancelled, sink));
    }
    let mut child = spawn(spec)?;
    let pid = child.id().ok_or_else(|| ProcessError::Wait {
        program: spec.program.clone(),
        source: io::Error::other("child exited before its pid was read"),
    })?;
    let pgid = Pid::from_raw(pid as i32);
    let mut guard = GroupGuard(Some(pgid));
    on_spawn(pid);

    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let mut pumps = JoinSet::new();
    if let Some(out) = child.stdout.take() {
        pumps.spawn(pump(out, Stream::Stdout, tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        pumps.spawn(pump(err, Stream::Stderr, tx.clone()));
    }
    drop(tx);
    let writer = tokio::task::spawn_blocking(move || deliver(sink, rx));

    let exit = supervise(&mut child, pgid, spec, cancel).await;
    // Stragglers (background jobs of the command) die with the step.
    signal_group(pgid, NixSignal::SIGKILL);
    guard.0 = None;
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while pumps.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        pumps.abort_all();
    }
    let output_error = |source| ProcessError::Output {
        program: spec.program.clone(),
        source,
    };
    let (sink, delivered) = writer
        .await
        .map_err(|e| output_error(io::Error::other(e)))?;
    let exit = exit.map_err(|source| ProcessError::Wait {
        program: spec.program.clone(),
        source,
    })?;
    delivered.map_err(output_error)?;
    Ok((exit, sink))
}

fn spawn(spec: &CommandSpec) -> Result<Child, ProcessError> {
    if !spec.cwd.is_dir() {
        return Err(ProcessError::MissingCwd {
            path: spec.cwd.clone(),
        });
    }
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .current_dir(&spec.cwd)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    die_with_parent(&mut cmd);
    cmd.spawn().map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => ProcessError::NotFound {
            program: spec.program.clone(),
        },
        _ => ProcessError::Spawn {
            program: spec.program.clone(),
            source,
        },
    })
}

/// Linux: the child gets SIGKILL when the thread that spawned it dies (with the daemon), so a
/// killed daemon leaves no agent behind. Spawn from long-lived runtime threads only.
#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure only makes async-signal-safe system calls (prctl, getppid) and
    // allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(NixSignal::SIGKILL)?;
            // The parent may have died between fork and prctl.
            if nix::unistd::getppid() != parent {
                return Err(Errno::ESRCH.into());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}

async fn pump(
    mut pipe: impl AsyncRead + Unpin,
    stream: Stream,
    tx: mpsc::Sender<(Stream, Vec<u8>)>,
) {
    let mut buf = vec![0u8; READ_BUFFER];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            // A closed channel only happens if the writer died; keep draining the pipe so the
            // child never blocks on a full pipe.
            Ok(n) => drop(tx.send((stream, buf[..n].to_vec())).await),
        }
    }
}

fn deliver<S: OutputSink>(
    mut sink: S,
    mut rx: mpsc::Receiver<(Stream, Vec<u8>)>,
) -> (S, io::Result<()>) {
    let mut result = Ok(());
    while let Some((stream, data)) = rx.blocking_recv() {
        if result.is_ok() {
            result = sink.write(stream, &data);
        }
    }
    (sink, result)
}

async fn supervise(
    child: &mut Child,
    pgid: Pid,
    spec: &CommandSpec,
    cancel: &CancellationToken,
) -> io::Result<Exit> {
    let deadline = async {
        match spec.timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        status = child.wait() => match exit_of(status?) {
            // Killed by whoever cancelled it (a lost lease kills the group at once).
            Exit::Signal(_) if cancel.is_cancelled() => Ok(Exit::Cancelled),
            exit => Ok(exit),
        },
        _ = deadline => {
            stop_group(child, pgid, spec.grace).await?;
            Ok(Exit::TimedOut)
        }
        _ = cancel.cancelled() => {
            stop_group(child, pgid, spec.grace).await?;
            Ok(Exit::Cancelled)
        }
    }
}

/// A duration as people write it in messages: `600 seconds`, `0.3 seconds`.
pub fn seconds_text(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} seconds", d.as_secs())
    } else {
        let text = format!("{:.3}", d.as_secs_f64());
        format!("{} seconds", text.trim_end_matches('0'))
    }
}

fn exit_of(status: ExitStatus) -> Exit {
    match (status.code(), status.signal()) {
        (Some(code), _) => Exit::Code(code),
        (None, Some(signal)) => Exit::Signal(signal),
        (None, None) => Exit::Code(-1),
    }
}

#[cfg(test)]
mod tests;
