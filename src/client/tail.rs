//! `loopd tail` (the run's output stream, printed raw until the run ends) and artifact
//! downloads (streamed to a file or stdout, checked against the sha256 the server sends).

use super::{enc, ClientError, Daemon, Result};
use crate::api::OutputFrame;
use futures_util::StreamExt;
use reqwest::Method;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;

/// Splits an SSE byte stream into frames and hands each `output` frame's content to `out`.
pub fn parse_frames(buf: &mut Vec<u8>, mut out: impl FnMut(OutputFrame)) {
    while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
        let frame: Vec<u8> = buf.drain(..end + 2).collect();
        let text = String::from_utf8_lossy(&frame);
        let (mut event, mut data) = (String::new(), String::new());
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data = v.trim().to_string();
            }
        }
        if event == "output" {
            if let Ok(f) = serde_json::from_str::<OutputFrame>(&data) {
                out(f);
            }
        }
    }
}

/// Prints the run's output from `offset` until the server closes the stream.
pub async fn follow(d: &Daemon, id: &str, offset: u64) -> Result<()> {
    let req = d.request(
        Method::GET,
        &format!("/runs/{}/output?offset={offset}", enc(id)),
    );
    let resp = d.send(req, "run").await?;
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    let stdout = std::io::stdout();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ClientError(format!("stream interrupted: {e}")))?;
        buf.extend_from_slice(&chunk);
        let mut lock = stdout.lock();
        parse_frames(&mut buf, |f| {
            let _ = lock.write_all(f.content.as_bytes());
        });
        let _ = lock.flush();
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_chunks_are_joined_and_comments_skipped() {
        let mut buf =
            b": keep-alive\n\nevent: output\ndata: {\"step_id\":\"s\",\"offset\":0,\"con".to_vec();
        let mut got = Vec::new();
        parse_frames(&mut buf, |f| got.push(f.content));
        assert!(got.is_empty());
        buf.extend_from_slice(b"tent\":\"hi\"}\nid: 2\n\n");
        parse_frames(&mut buf, |f| got.push(f.content));
        assert_eq!(got, vec!["hi".to_string()]);
        assert!(buf.is_empty());
    }
}
