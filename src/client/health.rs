//! `loopd health`: one `GET /ready` for container healthchecks and scripts that poll. Exit 0
//! when it answers 200; otherwise one error line (why, from the daemon's JSON error when it
//! sent one). No retries and a short budget: the caller decides how often to ask. Given
//! several addresses (`LOOPD_ADDR=http://a:7700,http://b:7700`, several controllers), it asks
//! all of them at once and reports each on a line of its own; exit 0 only when all are ready.

use super::{ClientError, Result};
use crate::api::ErrorBody;
use reqwest::StatusCode;
use std::time::Duration;

/// The whole request, connect included, must finish within this: longer than a controller
/// takes to say its database does not answer (its pool waits 5 s for a connection).
const BUDGET: Duration = Duration::from_secs(10);

/// Asks `<addr>/ready` once, of every address in `addrs` (separated by commas).
pub async fn check(addrs: &str) -> Result<()> {
    let list = crate::settings::split_urls(addrs);
    if list.len() <= 1 {
        ask(addrs.trim()).await?;
        println!("ready");
        return Ok(());
    }
    let answers = futures_util::future::join_all(list.iter().map(|a| ask(a))).await;
    let mut failed = 0;
    for (addr, answer) in list.iter().zip(answers) {
        match answer {
            Ok(()) => println!("ready at {addr}"),
            Err(ClientError(why)) => {
                failed += 1;
                println!("{why}");
            }
        }
    }
    match failed {
        0 => Ok(()),
        n => Err(ClientError(format!(
            "{n} of {} addresses not ready (see above)",
            list.len()
        ))),
    }
}

/// One `GET <addr>/ready`: `Ok` when it answered 200, else why not.
async fn ask(addr: &str) -> Result<()> {
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
