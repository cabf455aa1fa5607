//! Helpers for the exec tests: scripts in temp dirs, a minimal environment, and waiting on a
//! condition with a deadline.

use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

/// Writes a `sh` script. Tests run it as `sh <path>`: executing a file just written races
/// with forks in other test threads (ETXTBSY).
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path
}

/// The environment given to test commands: only `PATH`.
pub fn test_env() -> Vec<(String, String)> {
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
    vec![("PATH".into(), path)]
}

/// Polls `cond` until it holds or `limit` passes; returns whether it held.
pub async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
