//! The system under test: a fresh Postgres database, a real `loopd --role controller` process
//! (the release binary cargo built for this bench), a git repository the runs come from, and
//! simulated workers that speak the worker API over HTTP like `loopd --role worker` does.

use crate::support::{pg::TestDb, proc::Loopd, repo::Repo, test_dir, TestDir};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub const JOIN: &str = "bench-join-token-0001";

/// A controller on its own database. Dropping it kills the process, then drops the database.
pub struct Cluster {
    pub ctl: Loopd,
    pub base: String,
    pub http: reqwest::Client,
    pub repo: Repo,
    pub db: TestDb,
    pub dir: TestDir,
}

impl Cluster {
    /// Starts a controller with default settings, except the run caps (every run has one step
    /// at a time, so a pool needs many runs) and `extra`.
    pub async fn start(name: &str, extra: &[(&str, &str)]) -> Cluster {
        let dir = test_dir(&format!("bench-{name}"));
        let db = TestDb::create();
        let repo = Repo::create(dir.path(), "repo", 3, "tick", &[]);
        let mut env = vec![
            ("LOOPD__STORAGE__TYPE", "postgres"),
            ("LOOPD__STORAGE__URL", db.url.as_str()),
            ("LOOPD_WORKER_JOIN_TOKEN", JOIN),
            ("LOOPD__SCHEDULER__MAX_CONCURRENT_RUNS", "100000"),
            ("LOOPD__SCHEDULER__MAX_RUNS_PER_WORKSPACE", "100000"),
            // The benches name each run's agent in its request (the operator's own pool).
            ("LOOPD__AUTH__ALLOW_REQUEST_COMMANDS", "true"),
            // Up to 1,000 simulated workers register within seconds.
            ("LOOPD__LIMITS__REGISTRATIONS_PER_MINUTE", "0"),
            ("LOOPD__LIMITS__MAX_LIVE_WORKERS", "0"),
            // Every simulated step counts against one agent account, whose limit claims check
            // (`[api_limits]` on, as by default). Its default maximum (8) would cap the pool
            // at 8 steps in flight and measure that cap; the operator of a pool this large
            // raises it to what the account allows (docs/usage-and-limits.md).
            ("LOOPD__API_LIMITS__MAX_CONCURRENT", "1000"),
        ];
        env.extend_from_slice(extra);
        // Experiments: LOOPD_BENCH_CONTROLLER_ENV="LOOPD__STORAGE__POOL_SIZE=32 KEY=VALUE…".
        let more = std::env::var("LOOPD_BENCH_CONTROLLER_ENV").unwrap_or_default();
        env.extend(more.split_whitespace().filter_map(|kv| kv.split_once('=')));
        let ctl = Loopd::spawn(
            &dir.path().join("controller"),
            &["--role", "controller"],
            &env,
        );
        ctl.wait_ready("/ready").await;
        Cluster {
            base: ctl.url(),
            ctl,
            http: reqwest::Client::new(),
            repo,
            db,
            dir,
        }
    }

    pub fn pid(&self) -> i32 {
        self.ctl.pid().as_raw()
    }

    /// Submits a git-mode run named `name` with `config` (a JSON object) as its override.
    pub async fn submit(&self, name: &str, config: Value) -> String {
        let body = json!({
            "spec_path": "specs/demo.md",
            "plan_path": "PLAN.md",
            "workspace_root": name,
            "workspace_source": "git",
            "repo_url": self.repo.url(),
            "name": name,
            "config_override": config.to_string(),
        });
        let r = self
            .http
            .post(format!("{}/runs", self.base))
            .json(&body)
            .send()
            .await
            .expect("POST /runs");
        let v: Value = r.json().await.expect("run JSON");
        v["run"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no run id in {v}"))
            .to_string()
    }

    pub async fn steps(&self, run_id: &str) -> Vec<Value> {
        let url = format!("{}/runs/{run_id}/steps", self.base);
        let Ok(r) = self.http.get(url).send().await else {
            return Vec::new();
        };
        let v: Value = r.json().await.unwrap_or_default();
        v["steps"].as_array().cloned().unwrap_or_default()
    }

    /// One counter of `GET /metrics` (summed over its label sets).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = match self.http.get(format!("{}/metrics", self.base)).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        text.lines()
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// Run settings for simulated steps: no review, the longest loop a run may ask for.
pub fn endless() -> Value {
    json!({"reviewer": false, "iterations": 10_000})
}

/// A simulated worker: registered with the join token, then authenticated by its own token.
#[derive(Clone)]
pub struct SimWorker {
    pub id: String,
    token: String,
    http: reqwest::Client,
    base: String,
    pub heartbeat_ms: u64,
}

/// A lease a simulated worker holds.
#[derive(Debug, Clone)]
pub struct Lease {
    pub run_id: String,
    pub step_id: String,
    pub epoch: i64,
}

impl Lease {
    /// The lease of an assignment (API.md §2).
    fn of(a: &Value) -> Lease {
        Lease {
            run_id: a["run_id"].as_str().unwrap_or_default().to_string(),
            step_id: a["step_id"].as_str().unwrap_or_default().to_string(),
            epoch: a["epoch"].as_i64().unwrap_or_default(),
        }
    }
}

impl SimWorker {
    pub async fn register(http: &reqwest::Client, base: &str, host: &str) -> SimWorker {
        let body = json!({"hostname": host, "capabilities": {"labels": [], "slots": 1, "version": "bench"}});
        let v: Value = http
            .post(format!("{base}/workers/register"))
            .bearer_auth(JOIN)
            .json(&body)
            .send()
            .await
            .expect("register")
            .json()
            .await
            .expect("register JSON");
        SimWorker {
            id: v["worker_id"].as_str().expect("worker_id").to_string(),
            token: v["token"].as_str().expect("token").to_string(),
            http: http.clone(),
            base: base.to_string(),
            heartbeat_ms: v["heartbeat_interval_ms"].as_u64().unwrap_or(2000),
        }
    }

    /// The same worker talking through `http` (e.g. a client of another runtime).
    pub fn with_client(&self, http: reqwest::Client) -> SimWorker {
        SimWorker {
            http,
            ..self.clone()
        }
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// Long-polls for a step; `Ok(None)` when none arrived within `wait_ms`.
    pub async fn claim(&self, wait_ms: u64) -> Result<Option<Lease>, String> {
        let r = self
            .post(&format!("/workers/{}/claim", self.id))
            .json(&json!({ "wait_ms": wait_ms }))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        match r.status().as_u16() {
            204 => Ok(None),
            200 => {
                let a: Value = r.json().await.map_err(|e| e.to_string())?;
                Ok(Some(Lease::of(&a)))
            }
            s => Err(format!("claim: {s} {}", r.text().await.unwrap_or_default())),
        }
    }

    /// Completes a step; `tail` must differ between iterations (the watchdog compares them).
    pub async fn complete(&self, l: &Lease, ok: bool, tail: &str) -> Result<(), String> {
        self.complete_then(l, ok, tail, false).await.map(drop)
    }

    /// [`SimWorker::complete`], asking with `claim_next` for the next step in the same request
    /// as `loopd --role worker` does; returns it when one was leased.
    pub async fn complete_then(
        &self,
        l: &Lease,
        ok: bool,
        tail: &str,
        claim_next: bool,
    ) -> Result<Option<Lease>, String> {
        let body = json!({
            "epoch": l.epoch,
            "status": if ok { "succeeded" } else { "failed" },
            "exit_code": if ok { 0 } else { 1 },
            "output_tail": tail,
            "artifacts": [],
            "claim_next": claim_next,
        });
        let r = self
            .post(&format!("/steps/{}/complete", l.step_id))
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("complete: {}", r.status()));
        }
        let v: Value = r.json().await.map_err(|e| e.to_string())?;
        Ok(v.get("next").map(Lease::of))
    }

    /// One heartbeat; returns the actions the controller gave for `leases`.
    pub async fn heartbeat(&self, status: &str, leases: &[Lease]) -> Result<Vec<String>, String> {
        let held: Vec<Value> = leases
            .iter()
            .map(|l| json!({"step_id": l.step_id, "epoch": l.epoch}))
            .collect();
        let body = json!({"status": status, "metrics": {}, "leases": held});
        let r = self
            .post(&format!("/workers/{}/heartbeat", self.id))
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("heartbeat: {}", r.status()));
        }
        let v: Value = r.json().await.map_err(|e| e.to_string())?;
        Ok(v["leases"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|l| l["action"].as_str().unwrap_or("?").to_string())
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Posts output at `offset`; returns the controller's next offset.
    pub async fn output(&self, l: &Lease, offset: u64, content: String) -> Result<u64, String> {
        let body = json!({"epoch": l.epoch, "offset": offset, "content": content});
        let r = self
            .post(&format!("/steps/{}/output", l.step_id))
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if r.status().as_u16() != 202 {
            return Err(format!("output: {}", r.status()));
        }
        let v: Value = r.json().await.map_err(|e| e.to_string())?;
        v["next_offset"]
            .as_u64()
            .ok_or_else(|| "no next_offset".into())
    }
}

/// Polls `check` every 25 ms until it answers, or gives up after `timeout`.
pub async fn poll<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The `p`th percentile (0-100) of `v` (sorted in place); NaN when empty.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

/// A spawned task that is aborted when this value goes (a section's helpers end with it).
pub struct Task(pub tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps a simulated worker online: a heartbeat every interval, reporting no lease (its steps
/// finish at once). Stops when the returned task is dropped.
pub fn heartbeats(w: SimWorker) -> Task {
    Task(tokio::spawn(async move {
        let every = Duration::from_millis(w.heartbeat_ms);
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = w.heartbeat("idle", &[]).await {
                eprintln!("heartbeat of {}: {e}", w.id);
            }
        }
    }))
}
