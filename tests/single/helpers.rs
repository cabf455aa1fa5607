//! A `loopd --role single` daemon per test (own data dir and port, quick scheduler ticks), and
//! what the tests read from it over the runs API: runs, steps, the events of an ended run (its
//! SSE stream replays them and closes), artifacts.

use crate::support::proc::Loopd;
use crate::support::repo::Repo;
use crate::support::{test_dir, wait_for, TestDir};
use serde_json::{json, Value};
use std::time::Duration;

/// How long a quick run may take to reach a state.
pub const STATE_TIMEOUT: Duration = Duration::from_secs(60);

/// A test's daemon and its directory.
pub struct Single {
    pub dir: TestDir,
    pub daemon: Loopd,
    pub http: reqwest::Client,
}

/// One stored event of a run, as its SSE stream gives it.
#[derive(Debug, Clone)]
pub struct Event {
    pub cursor: i64,
    pub event_type: String,
    pub step_id: Option<String>,
    pub payload: Value,
}

impl Single {
    /// A ready single-role daemon with `env` added to quick scheduler ticks.
    pub async fn start(name: &str, env: &[(&str, &str)]) -> Single {
        let dir = test_dir(name);
        let mut env = env.to_vec();
        env.push(("LOOPD__SCHEDULER__TICK_INTERVAL_MS", "100"));
        let daemon = Loopd::spawn(&dir.path().join("data"), &["--role", "single"], &env);
        daemon.wait_ready("/ready").await;
        Single {
            dir,
            daemon,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.daemon.url())
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let r = self.http.get(self.url(path)).send().await.expect("GET");
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.expect("JSON body")
    }

    pub async fn get_bytes(&self, path: &str) -> bytes::Bytes {
        let r = self.http.get(self.url(path)).send().await.expect("GET");
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.bytes().await.expect("body")
    }

    /// A verb (`pause`, `cancel` …) on run `id`; asserts 204.
    pub async fn verb(&self, id: &str, verb: &str) {
        let r = self
            .http
            .post(self.url(&format!("/runs/{id}/{verb}")))
            .send()
            .await
            .expect("POST");
        assert_eq!(r.status().as_u16(), 204, "{verb} {id}");
    }

    /// A repository in the test's directory driven by the fake agent in `mode`.
    pub fn repo(&self, name: &str, tasks: usize, mode: &str, config: &[&str]) -> Repo {
        Repo::create(self.dir.path(), name, tasks, mode, config)
    }

    /// `POST /runs` for `repo`'s spec and plan (plus `extra` fields); the run's id.
    pub async fn create(&self, repo: &Repo, extra: Value) -> String {
        let mut body = json!({
            "spec_path": "specs/demo.md",
            "plan_path": "PLAN.md",
            "workspace_root": repo.path.to_string_lossy(),
        });
        if let (Some(b), Some(x)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(x.clone());
        }
        let r = self
            .http
            .post(self.url("/runs"))
            .json(&body)
            .send()
            .await
            .expect("POST /runs");
        let status = r.status();
        let v: Value = r.json().await.expect("JSON body");
        assert_eq!(status.as_u16(), 201, "POST /runs: {v}");
        v["run"]["id"].as_str().expect("run id").to_string()
    }

    pub async fn run(&self, id: &str) -> Value {
        self.get_json(&format!("/runs/{id}")).await["run"].clone()
    }

    /// Every step of the run, a postmortem's too (`?phases=all`).
    pub async fn steps(&self, id: &str) -> Vec<Value> {
        self.get_json(&format!("/runs/{id}/steps?phases=all")).await["steps"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits for run `id` to have status `want`; the run.
    pub async fn wait_status(&self, id: &str, want: &str) -> Value {
        let what = format!("run {id} to be {want} (log: {})", self.daemon.log.display());
        wait_for(&what, STATE_TIMEOUT, || async {
            let r = self.run(id).await;
            (r["status"] == want).then_some(r)
        })
        .await
    }

    /// Waits until run `id` has a step IN_PROGRESS; that step.
    pub async fn wait_step_in_progress(&self, id: &str) -> Value {
        wait_for(
            &format!("a step of {id} in progress"),
            STATE_TIMEOUT,
            || async {
                let steps = self.steps(id).await;
                steps.into_iter().find(|s| s["status"] == "IN_PROGRESS")
            },
        )
        .await
    }

    /// The events of an ended run, in stream order (the stream closes after the last one).
    pub async fn events(&self, id: &str) -> Vec<Event> {
        let r = self
            .http
            .get(self.url(&format!("/runs/{id}/events")))
            .send()
            .await
            .expect("GET events");
        assert!(r.status().is_success());
        let body = tokio::time::timeout(STATE_TIMEOUT, r.text())
            .await
            .expect("the events stream of an ended run closes")
            .expect("body");
        let mut out = Vec::new();
        for frame in body.split("\n\n") {
            let (mut cursor, mut data) = (None, None);
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    cursor = v.trim().parse::<i64>().ok();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = serde_json::from_str::<Value>(v.trim()).ok();
                }
            }
            if let (Some(cursor), Some(d)) = (cursor, data) {
                out.push(Event {
                    cursor,
                    event_type: d["event_type"].as_str().unwrap_or_default().to_string(),
                    step_id: d["step_id"].as_str().map(str::to_string),
                    payload: d["payload"].clone(),
                });
            }
        }
        out
    }

    /// The run's artifact list.
    pub async fn artifacts(&self, id: &str) -> Vec<Value> {
        self.get_json(&format!("/runs/{id}/artifacts")).await["artifacts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The text of artifact `name` of run `id`.
    pub async fn artifact_text(&self, id: &str, name: &str) -> String {
        let b = self
            .get_bytes(&format!("/runs/{id}/artifacts/{name}"))
            .await;
        String::from_utf8_lossy(&b).to_string()
    }
}

impl Single {
    /// The output log (`iter-NN-impl.log` …) of step `step_id` of run `id`.
    pub async fn step_log(&self, id: &str, step_id: &Value) -> String {
        let list = self.artifacts(id).await;
        let log = list
            .iter()
            .find(|a| {
                a["step_id"] == *step_id && a["name"].as_str().is_some_and(|n| n.ends_with(".log"))
            })
            .unwrap_or_else(|| panic!("no log of step {step_id}"));
        self.artifact_text(id, log["name"].as_str().unwrap_or_default())
            .await
    }
}

/// The phase of each step id, from the STEP_QUEUED/STEP_STARTED events.
pub fn phase_of(events: &[Event], step_id: &str) -> String {
    events
        .iter()
        .find(|e| e.event_type == "STEP_STARTED" && e.step_id.as_deref() == Some(step_id))
        .and_then(|e| e.payload["phase"].as_str())
        .unwrap_or_default()
        .to_string()
}

impl Drop for Single {
    /// SIGTERM first so the daemon kills the agents it runs (a hanging agent would outlive a
    /// SIGKILLed daemon); the process guard SIGKILLs whatever is left.
    fn drop(&mut self) {
        let Some(child) = self.daemon.child.as_mut() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None)) {
            self.daemon.signal(nix::sys::signal::Signal::SIGTERM);
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            while std::time::Instant::now() < deadline {
                match self.daemon.child.as_mut().map(|c| c.try_wait()) {
                    Some(Ok(None)) => std::thread::sleep(Duration::from_millis(20)),
                    _ => break,
                }
            }
        }
    }
}
