//! One `loopd --role single` process per test (own data dir, own port), a reqwest client that
//! talks to it, repositories driven by the fake agent, and read-only looks into its SQLite file.

use crate::support::proc::Loopd;
use crate::support::repo::Repo;
use crate::support::{test_dir, wait_for};
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

/// How long a quick run may take to reach a state.
pub const STATE_TIMEOUT: Duration = Duration::from_secs(30);

/// What runs are stored: runs, their events and their steps (global events, such as a worker
/// turning idle, are not about runs).
pub const RUN_ROWS: &[&str] = &["runs", "events WHERE run_id IS NOT NULL", "steps"];

/// A test's daemon and its directory.
pub struct Env {
    pub dir: crate::support::TestDir,
    pub daemon: Loopd,
    pub http: reqwest::Client,
    /// Sent as `Authorization: Bearer …` by [`Env::req`].
    pub token: Option<String>,
}

impl Env {
    /// A single-role daemon with no token, ready.
    pub async fn single(name: &str) -> Env {
        Self::single_with(name, &[]).await
    }

    /// A single-role daemon with extra environment (e.g. `LOOPD_AUTH_TOKEN`), ready.
    pub async fn single_with(name: &str, env: &[(&str, &str)]) -> Env {
        let dir = test_dir(name);
        let mut env: Vec<(&str, &str)> = env.to_vec();
        // Quick scheduler ticks keep the runs (and the suite) fast.
        env.push(("LOOPD__SCHEDULER__TICK_INTERVAL_MS", "100"));
        let daemon = Loopd::spawn(&dir.path().join("data"), &["--role", "single"], &env);
        daemon.wait_ready("/health").await;
        let token = env
            .iter()
            .find(|(k, _)| *k == "LOOPD_AUTH_TOKEN")
            .map(|(_, v)| v.to_string());
        let e = Env {
            dir,
            daemon,
            http: reqwest::Client::new(),
            token,
        };
        let ready = e.req(Method::GET, "/ready");
        let r = ready.send().await.expect("GET /ready");
        assert_eq!(r.status(), StatusCode::OK, "{}", e.daemon.log_text());
        e
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.daemon.url())
    }

    /// A request with the test's token (if any).
    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        let r = self.http.request(method, self.url(path));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    pub async fn get(&self, path: &str) -> Response {
        self.req(Method::GET, path).send().await.expect("GET")
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status(), StatusCode::OK, "GET {path}");
        r.json().await.expect("JSON body")
    }

    pub async fn post(&self, path: &str) -> Response {
        self.req(Method::POST, path).send().await.expect("POST")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.req(Method::POST, path)
            .json(body)
            .send()
            .await
            .expect("POST")
    }

    /// A repository in the test's directory whose agent is the fake agent in `mode`.
    pub fn repo(&self, name: &str, tasks: usize, mode: &str) -> Repo {
        Repo::create(self.dir.path(), name, tasks, mode, &[])
    }

    /// `POST /runs` for `repo` with its spec and plan (plus `extra` fields); the run object.
    pub async fn create(&self, repo: &Repo, extra: Value) -> Value {
        let mut body = json!({
            "spec_path": "specs/demo.md",
            "plan_path": "PLAN.md",
            "workspace_root": repo.path.to_string_lossy(),
        });
        if let (Some(b), Some(x)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(x.clone());
        }
        let r = self.post_json("/runs", &body).await;
        let status = r.status();
        let v: Value = r.json().await.expect("JSON body");
        assert_eq!(status, StatusCode::CREATED, "POST /runs: {v}");
        v["run"].clone()
    }

    /// Waits for run `id` to have status `want`; the run object.
    pub async fn wait_status(&self, id: &str, want: &str) -> Value {
        let what = format!("run {id} to be {want} (log: {})", self.daemon.log.display());
        wait_for(&what, STATE_TIMEOUT, || async {
            let v = self.get_json(&format!("/runs/{id}")).await;
            (v["run"]["status"] == want).then_some(v["run"].clone())
        })
        .await
    }

    /// Waits until run `id` has a step IN_PROGRESS (a hanging agent is running).
    pub async fn wait_step_in_progress(&self, id: &str) {
        let what = format!("a step of {id} in progress");
        wait_for(&what, STATE_TIMEOUT, || async {
            let v = self.get_json(&format!("/runs/{id}/steps")).await;
            let steps = v["steps"].as_array().cloned().unwrap_or_default();
            steps
                .iter()
                .any(|s| s["status"] == "IN_PROGRESS")
                .then_some(())
        })
        .await
    }

    pub fn sqlite_path(&self) -> PathBuf {
        self.daemon.data_dir.join("loopd.db")
    }

    /// Rows in the given tables (optionally with a `WHERE …`) of the daemon's SQLite file.
    pub fn row_counts(&self, tables: &[&str]) -> Vec<i64> {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let mut c = crate::support::open_live_sqlite(&self.sqlite_path());
        tables
            .iter()
            .map(|t| {
                diesel::sql_query(format!("SELECT COUNT(*) AS n FROM {t}"))
                    .get_result::<Count>(&mut c)
                    .expect("count rows")
                    .n
            })
            .collect()
    }
}

/// Status and the JSON error body `{"error","code"}` of a failed answer; asserts the shape.
pub async fn error_of(r: Response) -> (StatusCode, String) {
    let status = r.status();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = r.text().await.expect("body");
    assert!(
        ct.starts_with("application/json"),
        "{status}: error body must be JSON, got {ct:?}: {text}"
    );
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let obj = v.as_object().expect("error body is an object");
    assert!(
        obj["error"].as_str().is_some_and(|s| !s.is_empty()),
        "{text}"
    );
    let code = obj["code"].as_str().expect("code").to_string();
    assert!(
        !code.is_empty() && code.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
        "code must be snake_case: {code}"
    );
    (status, code)
}

impl Drop for Env {
    /// SIGTERM first so the daemon kills the agents it runs (a hanging agent would outlive a
    /// SIGKILLed daemon), then the process guard SIGKILLs whatever is left.
    fn drop(&mut self) {
        use nix::sys::signal::Signal;
        let Some(child) = self.daemon.child.as_mut() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None)) {
            self.daemon.signal(Signal::SIGTERM);
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
