//! Retrying control-plane calls while the controller is unreachable (a restart, a network
//! error): a step's calls with backoff, for at most [`CONTROLLER_RETRY_BUDGET`], and never
//! after the step's lease was lost or handed back (used by the step executor and its
//! workspace preparation; answers that are not transient are returned at once); and the
//! [`jitter`] every retry loop of the wing (claims, completions, streaming) sleeps with.

use super::state::Active;
use crate::control_plane::PlaneError;
use std::future::Future;
use std::time::{Duration, Instant};

/// How long a step keeps retrying one call against an unreachable controller. A controller
/// away for longer has taken the lease back by the time it returns.
pub const CONTROLLER_RETRY_BUDGET: Duration = Duration::from_secs(60);

/// Runs `call` until it succeeds, fails for good, the budget is spent, or the step stops.
pub async fn retry_transient<T, F, Fut>(
    active: &Active,
    what: &str,
    mut call: F,
) -> Result<T, PlaneError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, PlaneError>>,
{
    let started = Instant::now();
    let mut backoff = Duration::from_millis(250);
    loop {
        match call().await {
            Err(e) if e.is_transient() && !active.is_abandoned() => {
                if started.elapsed() >= CONTROLLER_RETRY_BUDGET {
                    return Err(e);
                }
                tracing::warn!(what, error = %e, "the controller is unreachable; retrying");
                tokio::time::sleep(jitter(backoff)).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

/// `d` ± 25 %, so reconnecting workers do not retry in lockstep.
pub fn jitter(d: Duration) -> Duration {
    let ms = d.as_millis() as u64;
    let spread = ms / 4;
    Duration::from_millis(ms - spread + rand::random::<u64>() % (2 * spread + 1))
}
