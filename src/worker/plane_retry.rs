//! Retrying control-plane calls while the controller is unreachable (a restart, a network
//! error): a step's calls with backoff, for at most [`CONTROLLER_RETRY_BUDGET`], and never
//! after the step's lease was lost or handed back (used by the step executor and its
//! workspace preparation; answers that are not transient are returned at once, and a stale
//! lease kills the step at once); and the
//! [`backoff`] policy every retry loop of the wing (claims, completions, streaming) and the
//! worker's registration use.

use super::state::Active;
use crate::control_plane::PlaneError;
use backon::{ExponentialBuilder, Retryable};
use std::future::Future;
use std::time::{Duration, Instant};

/// How long a step keeps retrying one call against an unreachable controller. A controller
/// away for longer has taken the lease back by the time it returns.
pub const CONTROLLER_RETRY_BUDGET: Duration = Duration::from_secs(60);

/// Pauses that double from `first` up to `cap`, each with a random part (up to the pause
/// again) so that workers that failed together do not retry in lockstep. No limit on
/// attempts: each caller says, with `when`, what ends its retries.
pub const fn backoff(first: Duration, cap: Duration) -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(first)
        .with_max_delay(cap)
        .with_jitter()
        .without_max_times()
}

/// Runs `call` until it succeeds, fails for good, the budget is spent, or the step stops.
pub async fn retry_transient<T, F, Fut>(
    active: &Active,
    what: &str,
    call: F,
) -> Result<T, PlaneError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, PlaneError>>,
{
    let started = Instant::now();
    let r = call
        .retry(backoff(Duration::from_millis(250), Duration::from_secs(5)))
        .sleep(tokio::time::sleep)
        .when(|e| {
            e.is_transient()
                && !active.is_abandoned()
                && started.elapsed() < CONTROLLER_RETRY_BUDGET
        })
        .notify(|e, _| tracing::warn!(what, error = %e, "the controller is unreachable; retrying"))
        .await;
    if let Err(PlaneError::Stale | PlaneError::Gone(_)) = &r {
        active.lose(&format!("the controller refused {what}: the lease is gone"));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use backon::BackoffBuilder;

    #[test]
    fn pauses_double_up_to_the_cap_and_never_run_out() {
        let pauses: Vec<Duration> = backoff(Duration::from_millis(100), Duration::from_millis(400))
            .build()
            .take(50)
            .collect();
        assert_eq!(pauses.len(), 50);
        // Jitter adds at most the pause again on top of 100, 200, 400, 400, … ms (±1 ms: the
        // crate doubles in f32).
        for (i, p) in pauses.iter().enumerate() {
            let base = 100u128 << i.min(2);
            let ms = p.as_millis();
            assert!(ms + 1 >= base && ms <= 2 * base + 1, "pause {i}: {p:?}");
        }
    }
}
