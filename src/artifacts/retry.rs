//! Upload retries: exponential backoff with jitter, one `warn!` per failed attempt, and the
//! "failed after N attempts" error when they run out. Used only by the store's upload methods.

use super::error::with_causes;
use super::ArtifactError;
use rand::Rng;
use std::future::Future;
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
    /// The pause before attempt `failed + 1`, without jitter: `base * 2^(failed-1)`, capped.
    pub fn backoff(&self, failed: u32) -> Duration {
        let factor = 1u32 << failed.saturating_sub(1).min(20);
        self.base.saturating_mul(factor).min(MAX_BACKOFF)
    }

    /// [`Self::backoff`] plus up to half of it again, so that uploads that failed together
    /// do not retry in lockstep.
    fn backoff_with_jitter(&self, failed: u32) -> Duration {
        let pause = self.backoff(failed);
        let half_ms = u64::try_from(pause.as_millis() / 2).unwrap_or(u64::MAX);
        pause + Duration::from_millis(rand::thread_rng().gen_range(0..=half_ms))
    }

    /// Runs `attempt` until it succeeds, fails with a final error, or the attempts run out.
    pub async fn run<T, F, Fut>(&self, key: &str, mut attempt: F) -> Result<T, ArtifactError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, AttemptError>>,
    {
        let attempts = self.attempts.max(1);
        let mut failed = 0;
        loop {
            let e = match attempt().await {
                Ok(v) => return Ok(v),
                Err(AttemptError::Final(e)) => return Err(e),
                Err(AttemptError::Store(e)) => e,
            };
            failed += 1;
            if failed >= attempts || !is_retryable(&e) {
                return Err(ArtifactError::Upload {
                    key: key.to_string(),
                    attempts: failed,
                    source: Box::new(e),
                });
            }
            let pause = self.backoff_with_jitter(failed);
            tracing::warn!(
                key,
                attempt = failed,
                of = attempts,
                retry_in_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
                error = %with_causes(&e),
                "artifact upload attempt failed; retrying"
            );
            tokio::time::sleep(pause).await;
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
    use std::sync::atomic::{AtomicU32, Ordering};

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
    fn backoff_doubles_and_is_capped() {
        let p = policy(5, 200);
        assert_eq!(p.backoff(1), Duration::from_millis(200));
        assert_eq!(p.backoff(2), Duration::from_millis(400));
        assert_eq!(p.backoff(3), Duration::from_millis(800));
        assert_eq!(p.backoff(40), MAX_BACKOFF);
    }

    #[test]
    fn jitter_adds_at_most_half_the_backoff() {
        let p = policy(5, 100);
        for _ in 0..100 {
            let d = p.backoff_with_jitter(2);
            assert!(d >= Duration::from_millis(200) && d <= Duration::from_millis(300));
        }
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
