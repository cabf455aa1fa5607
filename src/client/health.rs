//! `loopd health`: one `GET /ready` for container healthchecks and scripts that poll. Exit 0
//! when it answers 200; otherwise one error line (why, from the daemon's JSON error when it
//! sent one). No retries and a short budget: the caller decides how often to ask.

use super::{ClientError, Result};
use crate::api::ErrorBody;
use reqwest::StatusCode;
use std::time::Duration;

/// The whole request, connect included, must finish within this: longer than a controller
/// takes to say its database does not answer (its pool waits 5 s for a connection).
const BUDGET: Duration = Duration::from_secs(10);

/// Asks `<addr>/ready` once.
pub async fn check(addr: &str) -> Result<()> {
    let base = addr.trim_end_matches('/');
    let bad = |why: &str| ClientError(format!("invalid --addr {addr}: {why}"));
    let url = url::Url::parse(&format!("{base}/ready")).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("use an http:// or https:// URL"));
    }
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .timeout(BUDGET)
        .build()
        .map_err(|e| ClientError(e.to_string()))?;
    let resp = http.get(url).send().await.map_err(|e| {
        ClientError(if e.is_connect() {
            format!("daemon not running at {base}")
        } else if e.is_timeout() {
            format!("no answer from {base} within {}s", BUDGET.as_secs())
        } else {
            format!("request to {base} failed: {e}")
        })
    })?;
    let status = resp.status();
    if status == StatusCode::OK {
        println!("ready");
        return Ok(());
    }
    let why = resp
        .json::<ErrorBody>()
        .await
        .map(|b| b.error)
        .unwrap_or_else(|_| status.canonical_reason().unwrap_or("no reason").into());
    Err(ClientError(format!(
        "not ready at {base}: {why} (HTTP {})",
        status.as_u16()
    )))
}
