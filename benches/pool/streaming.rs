//! Streaming: a simulated worker posts N MB of step output in 256 KiB chunks (as the worker's
//! streamer does, each after the previous one was acknowledged) while an SSE client reads
//! `/runs/{id}/output`. Every 128-byte line carries its sequence number and the time it was
//! posted, so the reader measures the lag per line and counts missing or repeated lines.

use crate::cluster::{endless, percentile, Cluster, Lease, SimWorker, Task};
use crate::{Opts, Table};
use futures_util::StreamExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LINE: usize = 128;
const CHUNK_LINES: usize = 2048; // 256 KiB, the worker streamer's chunk

/// `S<seq> T<micros since start> ` padded with dots to LINE bytes (newline included).
fn line(seq: u64, micros: u128) -> String {
    let mut l = format!("S{seq:010} T{micros:014} ");
    l.push_str(&".".repeat(LINE - 1 - l.len()));
    l.push('\n');
    l
}

/// What the reader saw.
#[derive(Default)]
struct Seen {
    bytes: u64,
    next_seq: u64,
    missing: u64,
    repeated: u64,
    offset_errors: u64,
    lags_ms: Vec<f64>,
    partial: String,
}

impl Seen {
    fn take(&mut self, frame_offset: u64, content: &str, t0: Instant) {
        if frame_offset != self.bytes {
            self.offset_errors += 1;
        }
        self.bytes += content.len() as u64;
        let now = t0.elapsed().as_micros() as f64;
        // Lines are cut from the front of what is held in one pass: removing each line from
        // the front of a 256 KiB chunk would move the rest of it every time (the reader,
        // not loopd, would set the lag).
        let mut text = std::mem::take(&mut self.partial);
        text.push_str(content);
        let mut rest = text.as_str();
        while let Some(end) = rest.find('\n') {
            let (l, after) = rest.split_at(end + 1);
            rest = after;
            let seq = l.get(1..11).and_then(|v| v.parse::<u64>().ok());
            let ts = l.get(13..27).and_then(|v| v.parse::<f64>().ok());
            match (seq, ts) {
                (Some(s), Some(ts)) => {
                    if s > self.next_seq {
                        self.missing += s - self.next_seq;
                    } else if s < self.next_seq {
                        self.repeated += 1;
                    }
                    self.next_seq = self.next_seq.max(s + 1);
                    self.lags_ms.push((now - ts) / 1000.0);
                }
                _ => self.missing += 1,
            }
        }
        self.partial = rest.to_string();
    }
}

async fn read_sse(c: &Cluster, run: &str, seen: Arc<Mutex<Seen>>, t0: Instant) -> Task {
    let resp = c
        .http
        .get(format!("{}/runs/{run}/output", c.base))
        .send()
        .await
        .expect("GET output");
    Task(tokio::spawn(async move {
        let mut body = resp.bytes_stream();
        let mut buf = String::new();
        while let Some(Ok(b)) = body.next().await {
            buf.push_str(&String::from_utf8_lossy(&b));
            while let Some(end) = buf.find("\n\n") {
                let frame: String = buf.drain(..end + 2).collect();
                let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: ")) else {
                    continue;
                };
                let v: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
                let (off, text) = (
                    v["offset"].as_u64().unwrap_or(u64::MAX),
                    v["content"].as_str().unwrap_or(""),
                );
                seen.lock().expect("seen").take(off, text, t0);
            }
        }
    }))
}

pub async fn run(o: &Opts, t: &mut Table) {
    let total = (o.stream_mb << 20) as u64;
    println!("streaming: {} MB through /runs/{{id}}/output", o.stream_mb);
    let c = Cluster::start("streaming", &[]).await;
    let w = SimWorker::register(&c.http, &c.base, "streamer").await;
    let run = c.submit("streaming", endless()).await;
    let lease: Lease = loop {
        if let Ok(Some(l)) = w.claim(30_000).await {
            break l;
        }
    };
    // Keep the lease while streaming.
    let (hw, hl) = (w.clone(), lease.clone());
    let _beat = Task(tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(hw.heartbeat_ms)).await;
            let _ = hw.heartbeat("busy", std::slice::from_ref(&hl)).await;
        }
    }));
    let t0 = Instant::now();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let reader = read_sse(&c, &run, seen.clone(), t0).await;
    let (mut offset, mut seq, mut post_errors) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    while offset < total {
        let micros = t0.elapsed().as_micros();
        let mut chunk = String::with_capacity(LINE * CHUNK_LINES);
        while chunk.len() < LINE * CHUNK_LINES && offset + (chunk.len() as u64) < total {
            chunk.push_str(&line(seq, micros));
            seq += 1;
        }
        let len = chunk.len() as u64;
        match w.output(&lease, offset, chunk).await {
            Ok(next) if next == offset + len => offset = next,
            Ok(next) => {
                eprintln!("controller holds {next} bytes, expected {}", offset + len);
                post_errors += 1;
                break;
            }
            Err(e) => {
                eprintln!("posting output failed: {e}");
                post_errors += 1;
                break;
            }
        }
    }
    let posted = started.elapsed().as_secs_f64();
    let all = crate::cluster::poll(Duration::from_secs(120), || async {
        (seen.lock().expect("seen").bytes >= total).then_some(())
    })
    .await;
    drop(reader);
    let _ = w.complete(&lease, true, "streamed").await;
    let mut s = std::mem::take(&mut *seen.lock().expect("seen"));
    let missing = s.missing + seq.saturating_sub(s.next_seq);
    let gaps = missing + s.repeated + s.offset_errors + post_errors;
    let (p99, max) = (
        percentile(&mut s.lags_ms, 99.0),
        s.lags_ms.last().copied().unwrap_or(f64::NAN),
    );
    t.add(
        &format!("stream lag p99 / max, {} MB (ms)", o.stream_mb),
        format!(
            "{p99:.0} / {max:.0} (posted at {:.0} MB/s, all read: {})",
            o.stream_mb as f64 / posted,
            all.is_some()
        ),
        "<= 1000",
        Some(max <= 1000.0 && all.is_some()),
    );
    t.add(
        "stream gaps (lines missing + repeated, bad offsets)",
        format!(
            "{gaps} ({missing} missing, {} repeated, {} offsets)",
            s.repeated, s.offset_errors
        ),
        "0",
        Some(gaps == 0 && all.is_some()),
    );
}
