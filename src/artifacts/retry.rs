//! Upload retries: exponential backoff with jitter (the `backon` crate's), one `warn!` per
//! failed attempt, and the "failed after N attempts" error when they run out. Used only by
//! the store's upload methods.

use super::error::with_causes;
use super::ArtifactError;
use backon::{ExponentialBuilder, Retryable};
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The longest pause between two attempts, whatever the base backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How often and how patiently an upload is tried.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    /// Attempts in all (at least 1).
    pub attempts: u32,
    /// Pause after the first failure; doubled after each further one.
    pub base: Duration,
}

/// Why one attempt failed: a store error may be retried, a local one is final.
pub(crate) enum AttemptError {
    Store(opendal::Error),
    Final(ArtifactError),
}

impl From<opendal::Error> for AttemptError {
    fn from(e: opendal::Error) -> Self {
        AttemptError::Store(e)
    }
}

impl RetryPolicy {
    /// The pauses between attempts: `attempts - 1` of them, doubling from `base` up to
    /// [`MAX_BACKOFF`], each with a random part of up to the pause again, so that uploads
    /// that failed together do not retry in lockstep.
    fn pauses(&self) -> ExponentialBuilder {
        ExponentialBuilder::new()
            .with_min_delay(self.base)
            .with_max_delay(MAX_BACKOFF)
            .with_jitter()
            .with_max_times(self.attempts.max(1) as usize - 1)
    }

    /// Runs `attempt` until it succeeds, fails with a final error, or the attempts run out.
    pub async fn run<T, F, Fut>(&self, key: &str, mut attempt: F) -> Result<T, ArtifactError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, AttemptError>>,
    {
        let attempts = self.attempts.max(1);
        let made = AtomicU32::new(0);
        let counted = || {
            made.fetch_add(1, Ordering::Relaxed);
            attempt()
        };
        let result = counted
            .retry(self.pauses())
            .sleep(tokio::time::sleep)
            .when(|e| matches!(e, AttemptError::Store(e) if is_retryable(e)))
            .notify(|e, pause| {
                if let AttemptError::Store(e) = e {
                    tracing::warn!(
                        key,
                        attempt = made.load(Ordering::Relaxed),
                        of = attempts,
                        retry_in_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
                        error = %with_causes(e),
                        "artifact upload attempt failed; retrying"
                    );
                }
            })
            .await;
        match result {
            Ok(v) => Ok(v),
            Err(AttemptError::Final(e)) => Err(e),
            Err(AttemptError::Store(e)) => Err(ArtifactError::Upload {
                key: key.to_string(),
                attempts: made.load(Ordering::Relaxed),
                source: Box::new(e),
            }),
        }
    }
}

/// Errors that another attempt cannot fix (bad credentials, bad configuration) end the
/// retries at once; everything else (connection refused, timeouts, 5xx) is tried again.
fn is_retryable(e: &opendal::Error) -> bool {
    use opendal::ErrorKind as K;
    !matches!(
        e.kind(),
        K::PermissionDenied
            | K::ConfigInvalid
            | K::Unsupported
            | K::IsADirectory
            | K::NotADirectory
            | K::IsSameFile
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(attempts: u32, base_ms: u64) -> RetryPolicy {
        RetryPolicy {
            attempts,
            base: Duration::from_millis(base_ms),
        }
    }

    fn unexpected() -> opendal::Error {
        opendal::Error::new(opendal::ErrorKind::Unexpected, "connection refused")
    }

    #[test]
    fn pauses_double_with_jitter_up_to_the_cap_and_run_out_with_the_attempts() {
        use backon::BackoffBuilder;
        let pauses: Vec<Duration> = policy(5, 200).pauses().build().collect();
        assert_eq!(pauses.len(), 4, "{pauses:?}");
        for (p, base) in pauses.iter().zip([200u128, 400, 800, 1600]) {
            // Jitter adds up to the pause again (±1 ms: the crate doubles in f32).
            let ms = p.as_millis();
            assert!(ms + 1 >= base && ms <= 2 * base + 1, "{pauses:?}");
        }
        let capped: Vec<Duration> = policy(30, 20_000).pauses().build().collect();
        assert!(capped.iter().all(|p| *p <= 2 * MAX_BACKOFF), "{capped:?}");
        assert!(policy(1, 200).pauses().build().next().is_none());
    }

    #[tokio::test]
    async fn a_failing_upload_is_tried_the_configured_number_of_times() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = policy(3, 1)
            .run("runs/r/x", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(AttemptError::Store(unexpected()))
            })
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let msg = r.unwrap_err().to_string();
        assert!(
            msg.starts_with("upload of runs/r/x failed after 3 attempts: "),
            "{msg}"
        );
        assert!(msg.contains("connection refused"), "{msg}");
    }

    #[tokio::test]
    async fn an_upload_that_recovers_returns_its_value() {
        let calls = AtomicU32::new(0);
        let r = policy(5, 1)
            .run("runs/r/x", || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 | 1 => Err(AttemptError::Store(unexpected())),
                    n => Ok(n),
                }
            })
            .await;
        assert_eq!(r.unwrap(), 2);
    }

    #[tokio::test]
    async fn permission_errors_and_local_errors_are_not_retried() {
        let calls = AtomicU32::new(0);
        let denied = opendal::Error::new(opendal::ErrorKind::PermissionDenied, "403");
        let mut denied = Some(denied);
        let r: Result<(), _> = policy(5, 1)
            .run("runs/r/x", || {
                calls.fetch_add(1, Ordering::SeqCst);
                let e = denied.take().unwrap_or_else(unexpected);
                async move { Err(AttemptError::Store(e)) }
            })
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(r.unwrap_err().to_string().contains("after 1 attempt: "));

        let r: Result<(), _> = policy(5, 1)
            .run("runs/r/x", || async {
                Err(AttemptError::Final(ArtifactError::Config("local".into())))
            })
            .await;
        assert!(matches!(r, Err(ArtifactError::Config(_))));
    }
}
