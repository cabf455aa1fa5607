//! `GET /runs/{id}/events`: replay from the start, after `Last-Event-ID`, after `after=<ms>`;
//! the stream closes after the run's terminal event; across a disconnect and a reconnect every
//! event arrives exactly once.

use crate::harness::{Env, STATE_TIMEOUT};
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;

/// One parsed SSE frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub event: String,
    pub cursor: String,
    pub data: Value,
}

/// Parses the complete frames at the front of `buf` (keep-alive comments skipped).
fn take_frames(buf: &mut String) -> Vec<Frame> {
    let mut out = Vec::new();
    while let Some(end) = buf.find("\n\n") {
        let raw: String = buf.drain(..end + 2).collect();
        let (mut event, mut cursor, mut data) = (None, None, None);
        for line in raw.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                event = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("id:") {
                cursor = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("data:") {
                data = Some(serde_json::from_str(v.trim()).expect("data is JSON"));
            }
        }
        if let (Some(event), Some(cursor), Some(data)) = (event, cursor, data) {
            out.push(Frame {
                event,
                cursor,
                data,
            });
        }
    }
    out
}

/// An open event stream.
struct Stream {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl Stream {
    async fn open(env: &Env, id: &str, query: &str, last_id: Option<&str>) -> Stream {
        let mut r = env.req(Method::GET, &format!("/runs/{id}/events{query}"));
        if let Some(l) = last_id {
            r = r.header("Last-Event-ID", l);
        }
        let resp = r.send().await.expect("GET events");
        assert_eq!(resp.status(), StatusCode::OK);
        let ct = resp.headers()["content-type"].to_str().unwrap_or_default();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        Stream {
            body: Box::pin(resp.bytes_stream()),
            buf: String::new(),
        }
    }

    /// The next frames; `None` when the server closed the stream.
    async fn next(&mut self) -> Option<Vec<Frame>> {
        loop {
            let chunk = tokio::time::timeout(STATE_TIMEOUT, self.body.next())
                .await
                .expect("an event (or the end of the stream) within the deadline");
            match chunk {
                None => return None,
                Some(c) => {
                    self.buf
                        .push_str(&String::from_utf8_lossy(&c.expect("stream chunk")));
                    let f = take_frames(&mut self.buf);
                    if !f.is_empty() {
                        return Some(f);
                    }
                }
            }
        }
    }

    /// Every frame until the server closes the stream.
    async fn until_closed(mut self) -> Vec<Frame> {
        let mut all = Vec::new();
        while let Some(f) = self.next().await {
            all.extend(f);
        }
        all
    }
}

fn assert_frame_shape(f: &Frame, run_id: &str) {
    assert_eq!(f.data["event_type"], f.event.as_str());
    assert_eq!(f.data["run_id"], run_id);
    assert!(f.data["id"].is_string(), "{:?}", f.data);
    assert!(f.data["timestamp"]
        .as_i64()
        .is_some_and(|t| t > 1_600_000_000_000));
    assert!(f.data.get("payload").is_some());
    if let Some(s) = f.data.get("step_id") {
        assert!(s.is_string() || s.is_null());
    }
}

fn ids(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .map(|f| f.data["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn completed(env: &Env, tasks: usize) -> String {
    let repo = env.repo("ws", tasks, "tick");
    let run = env.create(&repo, json!({})).await;
    let id = run["id"].as_str().expect("id").to_string();
    env.wait_status(&id, "COMPLETED").await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_replay_from_the_start_and_the_stream_closes_after_the_terminal_event() {
    let env = Env::single("sse-replay").await;
    let id = completed(&env, 1).await;
    let all = Stream::open(&env, &id, "", None).await.until_closed().await;
    assert!(all.len() >= 4, "{all:?}");
    for f in &all {
        assert_frame_shape(f, &id);
    }
    let first = &all[0];
    assert_eq!(first.event, "RUN_CREATED");
    for k in ["run_id", "name", "name_source", "spec_path", "plan_path"] {
        assert!(
            first.data["payload"].get(k).is_some(),
            "RUN_CREATED lacks {k}"
        );
    }
    assert_eq!(all.last().map(|f| f.event.as_str()), Some("RUN_COMPLETED"));
    assert!(all.iter().any(|f| f.event == "STEP_STARTED"));
    let cursors: Vec<i64> = all
        .iter()
        .map(|f| f.cursor.parse().expect("numeric cursor"))
        .collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "{cursors:?}");
    let unique: HashSet<_> = ids(&all).into_iter().collect();
    assert_eq!(unique.len(), all.len(), "no event twice");

    // After Last-Event-ID: exactly the events after that one.
    for k in [0, all.len() / 2, all.len() - 2] {
        let rest = Stream::open(&env, &id, "", Some(&all[k].cursor))
            .await
            .until_closed()
            .await;
        assert_eq!(
            ids(&rest),
            ids(&all[k + 1..]),
            "after cursor {}",
            all[k].cursor
        );
    }
    // A reconnect after the terminal event closes at once.
    let last = all.last().expect("frames").cursor.clone();
    let none = Stream::open(&env, &id, "", Some(&last))
        .await
        .until_closed()
        .await;
    assert!(none.is_empty(), "{none:?}");
    // Last-Event-ID wins over `after`.
    let rest = Stream::open(&env, &id, "?after=0", Some(&all[1].cursor))
        .await
        .until_closed()
        .await;
    assert_eq!(ids(&rest), ids(&all[2..]));

    // After a time: the events strictly later than it.
    let t = all[all.len() / 2].data["timestamp"].as_i64().expect("ts");
    let later = Stream::open(&env, &id, &format!("?after={t}"), None)
        .await
        .until_closed()
        .await;
    let want: Vec<Frame> = all
        .iter()
        .filter(|f| f.data["timestamp"].as_i64().unwrap_or(0) > t)
        .cloned()
        .collect();
    assert_eq!(ids(&later), ids(&want));
    assert_eq!(
        later.last().map(|f| f.event.as_str()),
        Some("RUN_COMPLETED")
    );
    let all_again = Stream::open(&env, &id, "?after=0", None)
        .await
        .until_closed()
        .await;
    assert_eq!(ids(&all_again), ids(&all));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_cursor_is_a_json_400() {
    let env = Env::single("sse-cursor").await;
    let id = completed(&env, 1).await;
    let r = env
        .req(Method::GET, &format!("/runs/{id}/events"))
        .header("Last-Event-ID", "abc")
        .send()
        .await
        .expect("GET");
    let (status, _) = crate::harness::error_of(r).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, code) =
        crate::harness::error_of(env.get(&format!("/runs/{id}/events?after=soon")).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code, "invalid_query");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_stream_delivers_every_event_exactly_once_across_a_reconnect() {
    let env = Env::single("sse-live").await;
    let repo = env.repo("ws", 3, "slow 0.3");
    let run = env.create(&repo, json!({})).await;
    let id = run["id"].as_str().expect("id").to_string();
    let mut first = Stream::open(&env, &id, "", None).await;
    let mut seen = Vec::new();
    // Read until the first step has started, then drop the connection mid-run.
    while !seen.iter().any(|f: &Frame| f.event == "STEP_STARTED") {
        seen.extend(
            first
                .next()
                .await
                .expect("the stream stays open while the run runs"),
        );
    }
    drop(first);
    let last = seen.last().expect("a frame").cursor.clone();
    let rest = Stream::open(&env, &id, "", Some(&last))
        .await
        .until_closed()
        .await;
    let mut joined = seen.clone();
    joined.extend(rest);
    let types: Vec<String> = joined
        .iter()
        .map(|f| format!("{}:{}", f.cursor, f.event))
        .collect();
    assert_eq!(
        joined.last().map(|f| f.event.as_str()),
        Some("RUN_COMPLETED"),
        "{types:?}"
    );
    assert_eq!(
        env.get_json(&format!("/runs/{id}")).await["run"]["status"],
        "COMPLETED"
    );
    let replay = Stream::open(&env, &id, "", None).await.until_closed().await;
    assert_eq!(
        ids(&joined),
        ids(&replay),
        "every event exactly once, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_of_a_retried_run_stays_open_until_its_new_end() {
    let env = Env::single("sse-retry").await;
    let repo = env.repo("ws", 1, "tick");
    // The agent fails until a flag file appears, then hangs.
    let flag = env.dir.path().join("flag");
    let script = env.dir.path().join("agent.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ -e {flag} ]; then exec sh {fake} hang \"$@\"; fi\nexit 1\n",
            flag = flag.display(),
            fake = crate::support::fake_agent()
        ),
    )
    .expect("script");
    let run = env
        .create(
            &repo,
            json!({"config_override": json!({"agent_cmd": format!("sh {}", script.display())}).to_string()}),
        )
        .await;
    let id = run["id"].as_str().expect("id").to_string();
    env.wait_status(&id, "FAILED").await;
    std::fs::write(&flag, "").expect("flag");
    let r = env.post(&format!("/runs/{id}/retry")).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    env.wait_status(&id, "RUNNING").await;

    let mut s = Stream::open(&env, &id, "", None).await;
    let mut seen = Vec::new();
    while !seen.iter().any(|f: &Frame| f.event == "RUN_RETRIED") {
        seen.extend(
            s.next()
                .await
                .unwrap_or_else(|| panic!("closed at the old RUN_FAILED: {seen:?}")),
        );
    }
    let r = env.post(&format!("/runs/{id}/cancel")).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let rest = tokio::time::timeout(Duration::from_secs(30), s.until_closed())
        .await
        .expect("closes after RUN_CANCELED");
    seen.extend(rest);
    let types: Vec<&str> = seen.iter().map(|f| f.event.as_str()).collect();
    let failed = types
        .iter()
        .position(|t| *t == "RUN_FAILED")
        .expect("failed");
    let canceled = types
        .iter()
        .position(|t| *t == "RUN_CANCELED")
        .expect("canceled");
    assert!(failed < canceled, "{types:?}");
}
