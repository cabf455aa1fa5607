//! `loopd tail` (the run's output stream, printed raw until the run ends) and artifact
//! downloads (streamed to a file or stdout, checked against the sha256 the server sends).
//! The output stream is read with `sse-stream`; a connection that drops (the daemon restarted,
//! the network cut) is resumed where the last frame ended (`Last-Event-ID`), with backon's
//! backoff, so nothing is printed twice or left out.

use super::{enc, ClientError, Daemon, Result};
use crate::api::OutputFrame;
use backon::{ExponentialBuilder, Retryable};
use futures_util::StreamExt;
use reqwest::Method;
use sha2::{Digest, Sha256};
use sse_stream::SseByteStream;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long `tail` keeps trying to get its stream back after it dropped.
const RECONNECT_BUDGET: Duration = Duration::from_secs(60);

/// A stream silent this long is taken for a dead connection (the daemon sends a keep-alive
/// comment every 15 s).
const SILENCE: Duration = Duration::from_secs(45);

/// Prints the run's output from `offset` until the server ends the stream (the run has ended
/// and everything was sent). A dropped stream is resumed after the last frame printed.
pub async fn follow(d: &Daemon, id: &str, offset: u64) -> Result<()> {
    let path = format!("/runs/{}/output?offset={offset}", enc(id));
    let mut cursor = offset;
    let mut resp = d.send(d.request(Method::GET, &path), "run").await?;
    loop {
        match print_frames(resp, &mut cursor).await {
            Ok(()) => return Ok(()),
            Err(e) => eprintln!("output stream interrupted ({e}); resuming at byte {cursor}"),
        }
        resp = reconnect(d, &path, cursor).await?;
    }
}

/// Prints each `output` frame's content and moves `cursor` to its id (the byte offset in the
/// run's output just after it); `Ok` when the server ended the stream, `Err` when it dropped.
async fn print_frames(
    resp: reqwest::Response,
    cursor: &mut u64,
) -> std::result::Result<(), String> {
    let mut events = SseByteStream::new(resp.bytes_stream());
    let stdout = std::io::stdout();
    loop {
        let event = match tokio::time::timeout(SILENCE, events.next()).await {
            Ok(Some(Ok(event))) => event,
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(None) => return Ok(()),
            Err(_) => return Err(format!("nothing received for {}s", SILENCE.as_secs())),
        };
        if event.event.as_deref() != Some("output") {
            continue;
        }
        let frame = event
            .data
            .as_deref()
            .and_then(|d| serde_json::from_str::<OutputFrame>(d).ok());
        if let Some(f) = frame {
            let mut lock = stdout.lock();
            let _ = lock.write_all(f.content.as_bytes());
            let _ = lock.flush();
        }
        if let Some(n) = event.id.as_deref().and_then(|v| v.parse().ok()) {
            *cursor = n;
        }
    }
}

/// How one reconnection attempt failed.
enum Attempt {
    /// Nothing answered, or the daemon failed (5xx): worth another try within the budget.
    Again(ClientError),
    /// The daemon refused (the run is gone, the token no longer valid …).
    Refused(ClientError),
}

/// Opens the stream again after `cursor`, retrying within [`RECONNECT_BUDGET`].
async fn reconnect(d: &Daemon, path: &str, cursor: u64) -> Result<reqwest::Response> {
    let start = Instant::now();
    let left = || RECONNECT_BUDGET.saturating_sub(start.elapsed());
    let attempt = || async {
        let req = d
            .request(Method::GET, path)
            .header("Last-Event-ID", cursor.to_string());
        match req.send().await {
            Err(e) => Err(Attempt::Again(d.transport(e))),
            Ok(r) if r.status().is_server_error() => Err(Attempt::Again(ClientError(format!(
                "HTTP error: {}",
                r.status().as_u16()
            )))),
            Ok(r) => d.check(r, "run").await.map_err(Attempt::Refused),
        }
    };
    let pauses = ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(2))
        .without_max_times();
    attempt
        .retry(pauses)
        .sleep(tokio::time::sleep)
        .when(|e| matches!(e, Attempt::Again(_)) && !left().is_zero())
        .adjust(|_, pause| pause.map(|p| p.min(left())))
        .await
        .map_err(|e| match e {
            Attempt::Again(ClientError(m)) => ClientError(format!(
                "output stream lost and not resumed within {}s: {m}",
                RECONNECT_BUDGET.as_secs()
            )),
            Attempt::Refused(e) => e,
        })
}

/// Downloads one artifact and checks its sha256.
pub async fn download(d: &Daemon, id: &str, name: &str, to: Option<&Path>) -> Result<()> {
    let path = format!("/runs/{}/artifacts/{}", enc(id), name);
    let resp = d.send(d.request(Method::GET, &path), "artifact").await?;
    let expected = resp
        .headers()
        .get("X-Checksum-Sha256")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut sink: Box<dyn Write> = match to {
        Some(p) => Box::new(
            std::fs::File::create(p)
                .map_err(|e| ClientError(format!("cannot write {}: {e}", p.display())))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let mut hasher = Sha256::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ClientError(format!("download interrupted: {e}")))?;
        hasher.update(&chunk);
        sink.write_all(&chunk)
            .map_err(|e| ClientError(format!("cannot write: {e}")))?;
    }
    sink.flush()
        .map_err(|e| ClientError(format!("cannot write: {e}")))?;
    let got = hex::encode(hasher.finalize());
    if let Some(want) = expected {
        if want != got {
            return Err(ClientError(format!(
                "checksum mismatch for {name}: expected {want}, got {got}"
            )));
        }
    }
    Ok(())
}
