//! A real controller on a fresh Postgres database, and "workers" that are nothing but HTTP
//! calls made by the test: register, heartbeat, claim, write, complete (database reads are in
//! `db.rs`).

use crate::support::pg::TestDb;
use crate::support::pool::{controller_env, refs, JOIN};
use crate::support::proc::Loopd;
use crate::support::repo::Repo;
use crate::support::{test_dir, wait_for, TestDir};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The client (runs API) token every controller here is started with.
pub const CLIENT: &str = "ctl-client-token";

/// Status and JSON body of an answer (`Null` for an empty body, a string for a non-JSON one).
pub type Answer = (u16, Value);

pub async fn answer(req: reqwest::RequestBuilder) -> Answer {
    let r = req.send().await.expect("the controller answers");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, body)
}

/// Asserts an error answer: this status, and a JSON `{"error","code"}` body with this code.
#[track_caller]
pub fn refused(a: &Answer, status: u16, code: &str) {
    assert_eq!(a.0, status, "expected {status} {code}, got {a:?}");
    assert!(a.1["error"].is_string(), "no error message in {a:?}");
    assert_eq!(a.1["code"], code, "wrong code in {a:?}");
}

/// A running controller and what the tests need around it.
pub struct Ctl {
    pub proc: Loopd,
    pub base: String,
    /// Sends the client token by default.
    pub client: reqwest::Client,
    /// Sends no token unless told.
    pub bare: reqwest::Client,
    pub db: TestDb,
    pub dir: TestDir,
}

impl Ctl {
    /// Starts `loopd --role controller` with the short timings of `controller_env`, the client
    /// token and `extra` settings.
    pub async fn start(name: &str, extra: &[(&str, &str)]) -> Ctl {
        Self::start_with_file(name, "", extra).await
    }

    /// Like `start`, with `toml` as the controller's config file (for settings the
    /// environment cannot hold, such as `[[auth.tokens]]`).
    pub async fn start_with_file(name: &str, toml: &str, extra: &[(&str, &str)]) -> Ctl {
        let dir = test_dir(name);
        let db = TestDb::create();
        let file = dir.path().join("controller.toml");
        std::fs::write(&file, toml).expect("config file");
        let file = file.to_string_lossy().to_string();
        let mut all = vec![
            ("LOOPD_AUTH_TOKEN", CLIENT),
            ("LOOPD_CONFIG", file.as_str()),
        ];
        all.extend_from_slice(extra);
        let env = controller_env(&db.url, &all);
        let proc = Loopd::spawn(
            &dir.path().join("controller"),
            &["--role", "controller"],
            &refs(&env),
        );
        proc.wait_ready("/ready").await;
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            "Authorization",
            format!("Bearer {CLIENT}").parse().expect("header"),
        );
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let bare = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        Ctl {
            base: proc.url(),
            proc,
            client,
            bare,
            db,
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Submits a shared_fs run over a fresh repository (`tasks` open boxes) requiring `labels`;
    /// returns its id once its first step is queued.
    pub async fn submit(&self, name: &str, tasks: usize, labels: &[&str]) -> String {
        let id = self.submit_nowait(name, tasks, labels).await;
        self.queued_step(&id).await;
        id
    }

    /// Like `submit`, returning as soon as the run is accepted.
    pub async fn submit_nowait(&self, name: &str, tasks: usize, labels: &[&str]) -> String {
        let repo = Repo::create(self.dir.path(), name, tasks, "tick", &[]);
        let body = json!({
            "spec_path": "specs/demo.md",
            "plan_path": "PLAN.md",
            "workspace_root": repo.path,
            "name": name,
            "labels": labels,
        });
        let (status, v) = answer(self.client.post(self.url("/runs")).json(&body)).await;
        assert_eq!(status, 201, "POST /runs: {v}");
        v["run"]["id"].as_str().expect("run id").to_string()
    }

    /// Waits for a QUEUED or RETRYING step of the run and returns its id.
    pub async fn queued_step(&self, run: &str) -> String {
        wait_for("a claimable step", Duration::from_secs(20), || async {
            self.steps(run)
                .await
                .into_iter()
                .find(|s| s["status"] == "QUEUED" || s["status"] == "RETRYING")
                .and_then(|s| s["id"].as_str().map(str::to_string))
        })
        .await
    }

    pub async fn run(&self, id: &str) -> Value {
        let (status, v) = answer(self.client.get(self.url(&format!("/runs/{id}")))).await;
        assert_eq!(status, 200, "GET /runs/{id}: {v}");
        v["run"].clone()
    }

    pub async fn steps(&self, run: &str) -> Vec<Value> {
        let (status, v) = answer(self.client.get(self.url(&format!("/runs/{run}/steps")))).await;
        assert_eq!(status, 200, "GET steps: {v}");
        v["steps"].as_array().cloned().unwrap_or_default()
    }

    pub async fn step(&self, run: &str, step: &str) -> Value {
        self.steps(run)
            .await
            .into_iter()
            .find(|s| s["id"] == step)
            .unwrap_or_else(|| panic!("no step {step} in run {run}"))
    }

    /// Registers a worker that presents an instance id, with `labels`.
    pub async fn worker(&self, host: &str, labels: &[&str]) -> Worker {
        let instance = uuid::Uuid::new_v4().to_string();
        let body = json!({
            "hostname": host,
            "capabilities": {"labels": labels, "slots": 1, "version": "test"},
            "instance_id": instance,
        });
        let (status, v) = self.register(&body, JOIN).await;
        assert_eq!(status, 201, "register: {v}");
        Worker {
            id: v["worker_id"].as_str().expect("worker_id").into(),
            token: v["token"].as_str().expect("token").into(),
            instance: Some(instance),
            base: self.base.clone(),
            http: self.bare.clone(),
        }
    }

    pub async fn register(&self, body: &Value, token: &str) -> Answer {
        answer(
            self.bare
                .post(self.url("/workers/register"))
                .bearer_auth(token)
                .json(body),
        )
        .await
    }
}

/// A worker played by the test over HTTP.
#[derive(Clone)]
pub struct Worker {
    pub id: String,
    pub token: String,
    pub instance: Option<String>,
    base: String,
    http: reqwest::Client,
}

/// A claimed step: what a worker writes with.
#[derive(Debug, Clone)]
pub struct Lease {
    pub step: String,
    pub run: String,
    pub epoch: i64,
}

impl Worker {
    /// The same worker talking to the controller at `base` (another on the same database).
    pub fn at(&self, base: &str) -> Worker {
        Worker {
            base: base.to_string(),
            ..self.clone()
        }
    }

    /// A request to `path` with this worker's token and instance header.
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        match &self.instance {
            Some(i) => r.header("X-Loopd-Instance", i),
            None => r,
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        answer(self.req(reqwest::Method::POST, path).json(&body)).await
    }

    pub async fn heartbeat(&self, status: &str, leases: &[&Lease]) -> Answer {
        let leases: Vec<Value> = leases
            .iter()
            .map(|l| json!({"step_id": l.step, "epoch": l.epoch}))
            .collect();
        self.post(
            &format!("/workers/{}/heartbeat", self.id),
            json!({"status": status, "metrics": {"load": 0.5}, "leases": leases}),
        )
        .await
    }

    pub async fn claim(&self, wait_ms: u64) -> Answer {
        self.post(
            &format!("/workers/{}/claim", self.id),
            json!({ "wait_ms": wait_ms }),
        )
        .await
    }

    /// Claims and expects a step (waiting up to 20 s for one).
    pub async fn take(&self) -> (Lease, Value) {
        let (status, a) = self.claim(20_000).await;
        assert_eq!(status, 200, "claim by {}: {a}", self.id);
        let lease = Lease {
            step: a["step_id"].as_str().expect("step_id").into(),
            run: a["run_id"].as_str().expect("run_id").into(),
            epoch: a["epoch"].as_i64().expect("epoch"),
        };
        (lease, a)
    }

    pub async fn output(&self, l: &Lease, offset: u64, content: &str) -> Answer {
        self.post(
            &format!("/steps/{}/output", l.step),
            json!({"epoch": l.epoch, "offset": offset, "content": content}),
        )
        .await
    }

    pub async fn event(&self, l: &Lease, event_type: &str) -> Answer {
        self.post(
            &format!("/steps/{}/events", l.step),
            json!({"epoch": l.epoch, "event_type": event_type, "payload": {"n": 1}}),
        )
        .await
    }

    pub async fn artifact(&self, l: &Lease, name: &str, bytes: &[u8]) -> Answer {
        let path = format!("/steps/{}/artifacts/{name}?epoch={}", l.step, l.epoch);
        answer(self.req(reqwest::Method::PUT, &path).body(bytes.to_vec())).await
    }

    /// A completion body for `l` (succeeded, exit 0).
    pub fn completion(l: &Lease) -> Value {
        json!({"epoch": l.epoch, "status": "succeeded", "exit_code": 0,
               "output_tail": "done\n", "artifacts": [], "duration_ms": 5})
    }

    pub async fn complete(&self, l: &Lease, body: &Value) -> Answer {
        self.post(&format!("/steps/{}/complete", l.step), body.clone())
            .await
    }

    pub async fn release(&self, l: &Lease) -> Answer {
        self.post(
            &format!("/steps/{}/release", l.step),
            json!({"epoch": l.epoch, "reason": "test release"}),
        )
        .await
    }

    /// Heartbeats every 150 ms in the background, reporting the leases in `held`, until the
    /// returned guard is dropped.
    pub fn keep_alive(&self, held: Arc<Mutex<Vec<Lease>>>) -> Beating {
        let me = self.clone();
        let task = tokio::spawn(async move {
            loop {
                let now: Vec<Lease> = held.lock().expect("leases").clone();
                let refs: Vec<&Lease> = now.iter().collect();
                let _ = me.heartbeat("busy", &refs).await;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        });
        Beating(task)
    }
}

/// A background heartbeat loop; stops when dropped.
pub struct Beating(tokio::task::JoinHandle<()>);

impl Drop for Beating {
    fn drop(&mut self) {
        self.0.abort();
    }
}
