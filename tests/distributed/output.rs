//! Live output from remote workers: `GET /runs/{id}/output` on the controller shows a step's
//! bytes while the step runs, and a worker that loses the controller (restart, network error)
//! resumes streaming where the controller is, so the stream equals the step's log artifact.
//! Output with multi-byte characters is resumed the dashboard's way: at `offset +
//! content.length` of the last frame, in UTF-16 code units.

use crate::cluster::{Cluster, Timings};
use crate::proxy::Proxy;
use crate::sse::Reader;
use crate::support::repo::Repo;
use crate::support::wait_for;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// Output frames collected per step.
#[derive(Default)]
pub struct Collected {
    pub steps: BTreeMap<String, String>,
    /// The run-wide cursor: `offset + content.length` (JavaScript's) of the last frame.
    pub cursor: u64,
}

impl Collected {
    pub fn add(&mut self, frame: &crate::sse::Frame) {
        let v: Value = serde_json::from_str(&frame.data).expect("output frame JSON");
        let step = v["step_id"].as_str().expect("step_id").to_string();
        let text = self.steps.entry(step.clone()).or_default();
        let offset = v["offset"].as_u64().expect("offset");
        assert_eq!(offset, self.cursor, "no gap, no repeat (step {step})");
        let content = v["content"].as_str().expect("content");
        text.push_str(content);
        self.cursor = offset + content.encode_utf16().count() as u64;
        let id: u64 = frame
            .id
            .as_deref()
            .and_then(|i| i.parse().ok())
            .expect("id");
        assert_eq!(id, self.cursor, "the id is offset + content.length");
    }
}

/// Reads frames until `until` holds for what was collected, or the stream ends or breaks.
pub async fn read_until(r: &mut Reader, got: &mut Collected, until: impl Fn(&Collected) -> bool) {
    while !until(got) {
        match r.next(Duration::from_secs(30)).await {
            Ok(Some(f)) if f.event == "output" => got.add(&f),
            Ok(Some(_)) => {}
            Ok(None) | Err(()) => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_streams_live_from_a_worker_and_resumes_without_a_gap_after_a_controller_restart() {
    let mut c = Cluster::start("output", 2, Timings::default()).await;
    let repo = Repo::create(c.dir.path(), "origin", 1, "drip8 30", &[]);
    let id = c.submit_git(&repo, &[]).await;
    let url = c.url(&format!("/runs/{id}/output"));

    let mut got = Collected::default();
    let mut reader = Reader::open(&c.http, &url).await;
    read_until(&mut reader, &mut got, |g| {
        g.steps.values().any(|t| t.contains("drip line 3 of 30"))
    })
    .await;
    let steps = c.steps(&id).await;
    assert_eq!(
        steps[0]["status"], "IN_PROGRESS",
        "bytes arrive while the step runs"
    );
    assert!(
        !got.steps.values().any(|t| t.contains("drip line 30 of 30")),
        "the stream is live, not the finished log"
    );

    // Restart the controller in the middle of the step (a network error for the worker).
    c.controller.kill9();
    // Stay down until the worker has met the controller's absence while streaming.
    wait_for(
        "the worker to retry its output",
        Duration::from_secs(30),
        || async {
            c.workers
                .iter()
                .any(|w| w.log_text().contains("cannot stream output; retrying"))
                .then_some(())
        },
    )
    .await;
    c.controller.start();
    c.controller.wait_ready("/ready").await;
    let resumed = format!("{url}?offset={}", got.cursor);
    let mut reader = Reader::open(&c.http, &resumed).await;
    read_until(&mut reader, &mut got, |_| false).await;

    let run = c.wait_status(&id, "COMPLETED").await;
    assert_eq!(run["status"], "COMPLETED");
    // A stream cut by the end of the run is complete; read whatever a break left out.
    let rest = format!("{url}?offset={}", got.cursor);
    let mut reader = Reader::open(&c.http, &rest).await;
    read_until(&mut reader, &mut got, |_| false).await;

    let stored: Vec<Value> = c.artifacts(&id).await;
    for s in c.steps(&id).await {
        let step_id = s["id"].as_str().expect("id");
        let name = s["output_path"].as_str().expect("output_path");
        let log = if stored.iter().any(|a| a["name"] == name) {
            String::from_utf8(c.download(&id, name).await).expect("UTF-8 log")
        } else {
            String::new()
        };
        let streamed = got.steps.get(step_id).cloned().unwrap_or_default();
        assert_eq!(
            streamed, log,
            "the streamed output of {name} equals its log artifact"
        );
    }
    let first = &got.steps[c.steps(&id).await[0]["id"].as_str().expect("id")];
    assert!(first.contains("drip line 1 of 30") && first.contains("drip line 30 of 30"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_survives_network_cuts_between_worker_and_controller_without_gap_or_repeat() {
    let mut c = Cluster::start("output-cuts", 0, Timings::default()).await;
    let upstream = format!("127.0.0.1:{}", c.controller.port)
        .parse()
        .expect("address");
    let proxy = Proxy::start(upstream).await;
    let w = c.spawn_worker(&proxy.url(), &[], &[]);
    c.workers[w].wait_ready("/health").await;
    c.wait_worker_status(w, "idle").await;
    let repo = Repo::create(c.dir.path(), "origin", 1, "drip 40", &[]);
    let id = c.submit_git(&repo, &[]).await;
    let url = c.url(&format!("/runs/{id}/output"));

    // Cut the worker's connections every few lines of output, while it streams.
    let mut got = Collected::default();
    let mut reader = Reader::open(&c.http, &url).await;
    let mut cuts = 0;
    for n in [4, 8, 12, 16, 20, 24] {
        let line = format!("drip line {n} of 40");
        read_until(&mut reader, &mut got, |g| {
            g.steps.values().any(|t| t.contains(&line))
        })
        .await;
        cuts += proxy.cut();
    }
    assert!(cuts > 0, "the cuts dropped live connections");
    read_until(&mut reader, &mut got, |_| false).await;
    c.wait_status(&id, "COMPLETED").await;
    let rest = format!("{url}?offset={}", got.cursor);
    let mut reader = Reader::open(&c.http, &rest).await;
    read_until(&mut reader, &mut got, |_| false).await;

    let step = &c.steps(&id).await[0];
    let log = String::from_utf8(c.download(&id, "iter-01-impl.log").await).expect("UTF-8");
    let streamed = &got.steps[step["id"].as_str().expect("id")];
    assert_eq!(streamed, &log, "the stream equals the log artifact");
    assert_eq!(
        step["lease_epoch"], 1,
        "the cuts did not cost the lease: {step}"
    );
}
