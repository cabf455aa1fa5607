//! Reading the runs API's SSE streams: a parser for whole bodies and a reader that yields
//! frames as they arrive (for live output).

use std::time::Duration;

/// One SSE frame (comments are dropped).
#[derive(Debug, Clone, Default)]
pub struct Frame {
    pub event: String,
    pub data: String,
    pub id: Option<String>,
}

fn frame(block: &str) -> Option<Frame> {
    let mut f = Frame::default();
    let mut any = false;
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("event: ") {
            f.event = v.to_string();
            any = true;
        } else if let Some(v) = line.strip_prefix("data: ") {
            f.data.push_str(v);
            any = true;
        } else if let Some(v) = line.strip_prefix("id: ") {
            f.id = Some(v.to_string());
        }
    }
    any.then_some(f)
}

/// The frames of a complete SSE body.
pub fn parse(text: &str) -> Vec<Frame> {
    text.split("\n\n").filter_map(frame).collect()
}

/// Frames of a live SSE response, as they arrive. Bytes are kept until a frame is whole, so
/// a character split between network reads is not garbled.
pub struct Reader {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl Reader {
    /// Opens `url` as an SSE stream.
    pub async fn open(client: &reqwest::Client, url: &str) -> Reader {
        Self::resume(client, url, None).await
    }

    /// Opens `url` as an SSE stream, resuming after `last_event_id` as a browser's
    /// `EventSource` does when it reconnects.
    pub async fn resume(
        client: &reqwest::Client,
        url: &str,
        last_event_id: Option<&str>,
    ) -> Reader {
        let mut req = client.get(url);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = req.send().await.expect("open SSE stream");
        assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
        Reader {
            resp,
            buf: Vec::new(),
        }
    }

    /// The next frame; `Ok(None)` when the stream ended, `Err(())` when nothing came within
    /// `timeout` or the connection broke.
    pub async fn next(&mut self, timeout: Duration) -> Result<Option<Frame>, ()> {
        loop {
            while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let block = String::from_utf8(block).expect("an SSE frame is valid UTF-8");
                if let Some(f) = frame(&block) {
                    return Ok(Some(f));
                }
            }
            match tokio::time::timeout(timeout, self.resp.chunk()).await {
                Ok(Ok(Some(bytes))) => self.buf.extend_from_slice(&bytes),
                Ok(Ok(None)) => return Ok(None),
                Ok(Err(_)) | Err(_) => return Err(()),
            }
        }
    }
}
