//! `GET /runs/{id}/output` positions, as the dashboard uses them: it resumes at
//! `offset + content.length` of the last frame it saw, with JavaScript string lengths (UTF-16
//! code units). Output with multi-byte characters (é, 日本, 🙂 — a surrogate pair) must resume
//! with nothing repeated or lost, `?offset=` and `Last-Event-ID` mean the same, and a cursor
//! inside a character still streams valid UTF-8 from that character on.

use crate::harness::{Env, STATE_TIMEOUT};
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A frame's length as the dashboard counts it (`content.length` in JavaScript).
fn js_len(s: &str) -> u64 {
    s.encode_utf16().count() as u64
}

/// One output frame: its `offset`, `content` and `id:`.
#[derive(Debug, Clone)]
struct Out {
    offset: u64,
    content: String,
    id: u64,
}

/// An open output stream; bytes are buffered whole, so a character split across network
/// chunks is never garbled by the reader.
struct Tail {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: Vec<u8>,
}

impl Tail {
    async fn open(env: &Env, id: &str, query: &str, last_id: Option<u64>) -> Tail {
        let mut r = env.req(Method::GET, &format!("/runs/{id}/output{query}"));
        if let Some(l) = last_id {
            r = r.header("Last-Event-ID", l.to_string());
        }
        let resp = r.send().await.expect("GET output");
        assert_eq!(resp.status(), StatusCode::OK);
        Tail {
            body: Box::pin(resp.bytes_stream()),
            buf: Vec::new(),
        }
    }

    /// The next output frame; `None` when the server closed the stream.
    async fn next(&mut self) -> Option<Out> {
        loop {
            while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = self.buf.drain(..end + 2).collect();
                let raw = String::from_utf8(raw).expect("every frame is valid UTF-8");
                if let Some(f) = parse(&raw) {
                    return Some(f);
                }
            }
            let chunk = tokio::time::timeout(STATE_TIMEOUT, self.body.next())
                .await
                .expect("output (or the end of the stream) within the deadline");
            match chunk {
                None => return None,
                Some(c) => self.buf.extend_from_slice(&c.expect("stream chunk")),
            }
        }
    }

    async fn rest(mut self) -> Vec<Out> {
        let mut out = Vec::new();
        while let Some(f) = self.next().await {
            out.push(f);
        }
        out
    }
}

fn parse(raw: &str) -> Option<Out> {
    let (mut event, mut data, mut id) = (None, None, None);
    for line in raw.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            event = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("data:") {
            data = Some(serde_json::from_str::<Value>(v.trim()).expect("data is JSON"));
        } else if let Some(v) = line.strip_prefix("id:") {
            id = Some(v.trim().parse::<u64>().expect("id is a number"));
        }
    }
    if event.as_deref() != Some("output") {
        return None;
    }
    let data = data.expect("data line");
    Some(Out {
        offset: data["offset"].as_u64().expect("offset"),
        content: data["content"].as_str().expect("content").to_string(),
        id: id.expect("id line"),
    })
}

/// Checks that frames follow each other from `cursor` with no gap and no overlap, each
/// frame's `id` being `offset + content.length`; appends their text; the new cursor.
fn follow(mut cursor: u64, frames: &[Out], text: &mut String) -> u64 {
    for f in frames {
        assert_eq!(f.offset, cursor, "no gap, no repeat: {f:?}");
        assert_eq!(
            f.id,
            f.offset + js_len(&f.content),
            "id = offset + length: {f:?}"
        );
        text.push_str(&f.content);
        cursor = f.id;
    }
    cursor
}

async fn drip_run(env: &Env, lines: usize) -> String {
    let repo = env.repo("repo", 1, &format!("drip8 {lines}"));
    let run = env.create(&repo, json!({})).await;
    run["id"].as_str().expect("id").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_stream_resumed_at_offset_plus_js_length_repeats_and_loses_nothing() {
    let env = Env::single("output-resume").await;
    let id = drip_run(&env, 20).await;

    // Read live until a few multi-byte lines came, then drop the connection.
    let mut tail = Tail::open(&env, &id, "", None).await;
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|f: &Out| f.content.contains("drip line 4 of 20"))
    {
        seen.push(tail.next().await.expect("live output before the run ends"));
    }
    drop(tail);
    let mut text = String::new();
    let last = seen.last().expect("a frame");
    // What the dashboard computes.
    let cursor = last.offset + js_len(&last.content);
    assert_eq!(follow(0, &seen, &mut text), cursor);
    let status = env.get_json(&format!("/runs/{id}")).await["run"]["status"].clone();
    assert_eq!(status, "RUNNING", "the cut was made while output was live");

    // Resume there and read to the end of the run.
    let rest = Tail::open(&env, &id, &format!("?offset={cursor}"), None)
        .await
        .rest()
        .await;
    let end = follow(cursor, &rest, &mut text);
    env.wait_status(&id, "COMPLETED").await;

    let whole = Tail::open(&env, &id, "", None).await.rest().await;
    let mut expected = String::new();
    assert_eq!(follow(0, &whole, &mut expected), end);
    assert!(
        expected.contains("drip line 20 of 20 é 日本 🙂\n"),
        "{expected}"
    );
    assert_eq!(
        text, expected,
        "the resumed stream is the whole output once"
    );

    // `Last-Event-ID` means the same as `?offset=`.
    let a = Tail::open(&env, &id, &format!("?offset={cursor}"), None)
        .await
        .rest()
        .await;
    let b = Tail::open(&env, &id, "", Some(cursor)).await.rest().await;
    let texts = |v: &[Out]| {
        v.iter()
            .map(|f| (f.offset, f.content.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(texts(&a), texts(&b));
    assert_eq!(a.first().map(|f| f.offset), Some(cursor));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_inside_a_character_starts_at_that_character() {
    let env = Env::single("output-inside").await;
    let id = drip_run(&env, 3).await;
    env.wait_status(&id, "COMPLETED").await;
    let whole = Tail::open(&env, &id, "", None).await.rest().await;
    let mut text = String::new();
    let end = follow(0, &whole, &mut text);
    let units: Vec<u16> = text.encode_utf16().collect();
    assert_eq!(units.len() as u64, end);

    // The first emoji: a surrogate pair at `pair`, `pair + 1`.
    let pair = units
        .iter()
        .position(|u| (0xD800..0xDC00).contains(u))
        .expect("an emoji in the output") as u64;
    for at in pair - 4..pair + 4 {
        let frames = Tail::open(&env, &id, &format!("?offset={at}"), None)
            .await
            .rest()
            .await;
        let first = frames.first().expect("frames after the cursor");
        // Inside the pair it starts at the pair; elsewhere exactly at the cursor.
        let start = if at == pair + 1 { pair } else { at };
        assert_eq!(first.offset, start, "offset={at}");
        let mut got = String::new();
        assert_eq!(follow(start, &frames, &mut got), end, "offset={at}");
        let want = String::from_utf16(&units[start as usize..]).expect("UTF-16");
        assert_eq!(got, want, "offset={at}: nothing lost");
    }
    // Past the end of an ended run: nothing, and the stream closes.
    let after = Tail::open(&env, &id, &format!("?offset={}", end + 5), None)
        .await
        .rest()
        .await;
    assert!(after.is_empty(), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_readers_of_a_live_run_all_get_the_same_output() {
    let env = Env::single("output-fanout").await;
    let id = drip_run(&env, 15).await;
    // All open before the output starts, so every one of them follows it live.
    let mut tails = Vec::new();
    for _ in 0..20 {
        tails.push(Tail::open(&env, &id, "", None).await);
    }
    let all = futures_util::future::join_all(tails.into_iter().map(Tail::rest)).await;
    env.wait_status(&id, "COMPLETED").await;
    let mut whole = String::new();
    let end = follow(
        0,
        &Tail::open(&env, &id, "", None).await.rest().await,
        &mut whole,
    );
    assert!(whole.contains("drip line 15 of 15 é 日本 🙂\n"), "{whole}");
    for (i, frames) in all.iter().enumerate() {
        let mut text = String::new();
        assert_eq!(follow(0, frames, &mut text), end, "reader {i}");
        assert_eq!(text, whole, "reader {i} got the whole output once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_streams_are_capped_per_run_and_per_client() {
    let env = Env::single_with(
        "output-caps",
        &[
            ("LOOPD__LIMITS__OUTPUT_STREAMS_PER_RUN", "2"),
            ("LOOPD__LIMITS__OUTPUT_STREAMS_PER_CLIENT", "3"),
        ],
    )
    .await;
    let (ra, rb) = (env.repo("a", 1, "hang"), env.repo("b", 1, "hang"));
    let a = env.create(&ra, json!({})).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let b = env.create(&rb, json!({})).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    let refused = |r: reqwest::Response| async move {
        let (status, code) = crate::harness::error_of(r).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(code, "too_many_streams");
    };

    let a1 = Tail::open(&env, &a, "", None).await;
    let _a2 = Tail::open(&env, &a, "", None).await;
    refused(env.get(&format!("/runs/{a}/output")).await).await;
    // Another run still has room, until the client's cap.
    let _b1 = Tail::open(&env, &b, "", None).await;
    refused(env.get(&format!("/runs/{b}/output")).await).await;

    // A stream its client closed gives its places back.
    drop(a1);
    let _a3 = crate::support::wait_for("a closed stream's slot", STATE_TIMEOUT, || async {
        let r = env.get(&format!("/runs/{a}/output")).await;
        (r.status() == StatusCode::OK).then_some(r)
    })
    .await;
    refused(env.get(&format!("/runs/{a}/output")).await).await;
}
