//! Streams a step's output file to the control plane while the step runs: it follows the file
//! the agent's output is appended to and sends what is new, in order, from the offset the
//! controller holds. Failed sends are retried with backoff and resume where the controller
//! says it is, so a reconnect leaves no gap and no repeat. `finish` flushes everything left.
//! Output refused as stale means the lease is gone: the step is killed at once.

use super::plane_retry::backoff;
use super::state::Active;
use crate::control_plane::{ControlPlane, PlaneError};
use crate::output_store::utf8_boundary;
use backon::Retryable;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const MAX_CHUNK: usize = 256 * 1024;
const POLL: Duration = Duration::from_millis(100);

/// A running output streamer.
pub struct Streamer {
    done: watch::Sender<bool>,
    task: JoinHandle<()>,
}

struct Cursor {
    plane: Arc<dyn ControlPlane>,
    /// Told when the controller refuses the output as stale: the lease is gone.
    active: Arc<Active>,
    step_id: String,
    epoch: i64,
    path: PathBuf,
    /// Position in the local file.
    file_pos: u64,
    /// Offset of the controller's copy.
    remote: u64,
}

impl Streamer {
    /// Starts following `path`; the controller already holds `remote_offset` bytes of this
    /// step's output (from an earlier lease of the same step).
    pub fn start(
        plane: Arc<dyn ControlPlane>,
        active: Arc<Active>,
        step_id: &str,
        epoch: i64,
        path: PathBuf,
        remote_offset: u64,
    ) -> Streamer {
        let (done, rx) = watch::channel(false);
        let cursor = Cursor {
            plane,
            active,
            step_id: step_id.into(),
            epoch,
            path,
            file_pos: 0,
            remote: remote_offset,
        };
        let task = tokio::spawn(follow(cursor, rx));
        Streamer { done, task }
    }

    /// Sends what is left and stops. Gives up after `deadline` (the controller is away).
    pub async fn finish(self, deadline: Duration) {
        let _ = self.done.send(true);
        let abort = self.task.abort_handle();
        if tokio::time::timeout(deadline, self.task).await.is_err() {
            abort.abort();
            tracing::warn!(
                "output streaming did not finish in time; the rest is in the log artifact"
            );
        }
    }
}

/// Reads up to MAX_CHUNK new bytes of the file at `pos`.
fn read_new(path: &PathBuf, pos: u64) -> std::io::Result<Vec<u8>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    f.seek(SeekFrom::Start(pos))?;
    let mut buf = Vec::new();
    f.take(MAX_CHUNK as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

async fn follow(mut c: Cursor, mut done: watch::Receiver<bool>) {
    loop {
        let finishing = *done.borrow();
        let (path, pos) = (c.path.clone(), c.file_pos);
        let chunk = tokio::task::spawn_blocking(move || read_new(&path, pos)).await;
        let chunk = match chunk {
            Ok(Ok(b)) => b,
            _ => Vec::new(),
        };
        // Hold back an incomplete UTF-8 character until its last byte arrives.
        let mut cut = utf8_boundary(&chunk);
        if finishing && chunk.len() < MAX_CHUNK {
            cut = chunk.len();
        }
        if cut > 0 {
            let text = String::from_utf8_lossy(&chunk[..cut]).into_owned();
            let sent = text.len() as u64;
            let remote = c.remote;
            let send = || {
                c.plane
                    .append_output(&c.step_id, c.epoch, remote, text.clone())
            };
            let r = send
                .retry(backoff(Duration::from_millis(200), Duration::from_secs(5)))
                .sleep(tokio::time::sleep)
                .when(|e| match e {
                    PlaneError::Stale | PlaneError::Gone(_) => false,
                    PlaneError::OffsetGap(held) => *held >= remote,
                    _ => true,
                })
                .notify(|e, _| tracing::warn!(error = %e, "cannot stream output; retrying"))
                .await;
            match r {
                Ok(next) => {
                    c.file_pos += cut as u64;
                    c.remote = next.max(c.remote + sent);
                }
                Err(PlaneError::OffsetGap(held)) => {
                    // The controller has less than we thought: rewind and resend.
                    let back = c.remote - held;
                    c.file_pos = c.file_pos.saturating_sub(back);
                    c.remote = held;
                }
                // The lease is gone: the step dies at once and nothing more is written.
                Err(PlaneError::Stale | PlaneError::Gone(_)) => {
                    c.active
                        .lose("the controller refused the step's output as stale");
                    return;
                }
                // Refused for good otherwise: the log artifact keeps the rest.
                Err(_) => return,
            }
            continue;
        }
        if finishing {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = done.changed() => {}
        }
    }
}
