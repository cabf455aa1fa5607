//! A controller and its workers as real processes, and the runs API calls the distributed
//! tests make over and over.

use super::proc::Loopd;
use super::repo::Repo;
use super::wait_for;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

pub const JOIN: &str = "test-join-token-0001";

/// Controller settings for fast failure detection; `extra` overrides or adds.
pub fn controller_env(db_url: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("LOOPD__STORAGE__TYPE", "postgres"),
        ("LOOPD__STORAGE__URL", db_url),
        ("LOOPD_WORKER_JOIN_TOKEN", JOIN),
        ("LOOPD__LEASE__TTL_MS", "4000"),
        ("LOOPD__LEASE__SWEEP_INTERVAL_MS", "200"),
        ("LOOPD__LEASE__WORKER_OFFLINE_AFTER_MS", "2000"),
        ("LOOPD__WORKER__HEARTBEAT_INTERVAL_MS", "300"),
        ("LOOPD__SCHEDULER__AFFINITY_WINDOW_MS", "300"),
        ("LOOPD__SCHEDULER__TICK_INTERVAL_MS", "200"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

pub fn refs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(k, s)| (k.as_str(), s.as_str())).collect()
}

/// Starts a controller with `env` in `dir/controller` on a free port; returns it ready.
pub async fn controller(dir: &Path, env: &[(String, String)]) -> Loopd {
    let c = Loopd::spawn_on(
        &dir.join("controller"),
        super::free_port(),
        &["--role", "controller"],
        &refs(env),
    );
    c.wait_ready("/ready").await;
    c
}

/// Starts a worker of `controller_url` in `dir/name`.
pub fn worker(dir: &Path, name: &str, controller_url: &str, extra: &[(&str, &str)]) -> Loopd {
    let mut env = vec![
        ("LOOPD_WORKER_JOIN_TOKEN", JOIN),
        ("LOOPD__WORKER__KILL_GRACE_MS", "300"),
    ];
    env.extend_from_slice(extra);
    Loopd::spawn(
        &dir.join(name),
        &["--role", "worker", "--controller", controller_url],
        &env,
    )
}

/// Submits a git-mode run of `repo` named `name`; returns its id.
pub async fn submit_git(client: &reqwest::Client, base: &str, repo: &Repo, name: &str) -> String {
    let body = json!({
        "spec_path": "specs/demo.md",
        "plan_path": "PLAN.md",
        "workspace_root": name,
        "workspace_source": "git",
        "repo_url": repo.url(),
        "name": name,
    });
    let resp = client
        .post(format!("{base}/runs"))
        .json(&body)
        .send()
        .await
        .expect("POST /runs");
    let v: Value = resp.json().await.expect("run JSON");
    v["run"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no run id in {v}"))
        .to_string()
}

/// `GET /runs/{id}` (None while the controller does not answer).
pub async fn run(client: &reqwest::Client, base: &str, id: &str) -> Option<Value> {
    let r = client.get(format!("{base}/runs/{id}")).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json::<Value>().await.ok().map(|v| v["run"].clone())
}

/// Waits for the run to reach `status`.
pub async fn wait_status(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    status: &str,
    timeout: Duration,
) -> Value {
    wait_for(&format!("run {id} to be {status}"), timeout, || async {
        run(client, base, id)
            .await
            .filter(|r| r["status"] == status)
    })
    .await
}

/// The run's steps.
pub async fn steps(client: &reqwest::Client, base: &str, id: &str) -> Vec<Value> {
    let v: Value = client
        .get(format!("{base}/runs/{id}/steps"))
        .send()
        .await
        .expect("steps")
        .json()
        .await
        .expect("steps JSON");
    v["steps"].as_array().cloned().unwrap_or_default()
}

/// Waits until the run has a step IN_PROGRESS and returns (step, worker id).
pub async fn running_step(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    timeout: Duration,
) -> (Value, String) {
    wait_for("a step in progress", timeout, || async {
        let s = steps(client, base, id).await;
        let st = s
            .into_iter()
            .find(|s| s["status"] == "IN_PROGRESS" && s["phase"] == "implementation")?;
        let w = st["worker_id"].as_str()?.to_string();
        Some((st, w))
    })
    .await
}

/// The id a worker process registered under (from `GET /workers`, matched by its data dir's
/// log line `registered with the controller`).
pub fn worker_id_of(w: &Loopd) -> Option<String> {
    let log = w.log_text();
    let line = log.lines().rev().find(|l| l.contains("registered"))?;
    let at = line.find("worker_id=")? + "worker_id=".len();
    let rest = &line[at..];
    Some(
        rest.split_whitespace()
            .next()?
            .trim_matches('"')
            .to_string(),
    )
}
