//! The audit of finished git-mode runs (chaos soak, fault tests): every task's commit in the
//! final bundle exactly once, the events and log artifact of every succeeded step, and the
//! live output against the step logs.

use super::repo::{subjects_at, Repo};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

/// What the audit found.
#[derive(Debug, Default)]
pub struct Report {
    pub completed: usize,
    pub duplicates: usize,
    pub lost: usize,
    pub leases_expired: usize,
    pub problems: Vec<String>,
}

async fn json(client: &reqwest::Client, url: &str) -> Value {
    client
        .get(url)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON")
}

async fn bytes(client: &reqwest::Client, url: &str) -> Option<Vec<u8>> {
    let r = client.get(url).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    Some(r.bytes().await.ok()?.to_vec())
}

/// Reads an SSE stream to its end and returns its frames as (event, data).
async fn sse(client: &reqwest::Client, url: &str) -> Vec<(String, Value)> {
    let text = client
        .get(url)
        .send()
        .await
        .expect("SSE")
        .text()
        .await
        .expect("SSE body");
    text.split("\n\n")
        .filter_map(|frame| {
            let mut event = None;
            let mut data = None;
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(v).ok();
                }
            }
            Some((event?, data?))
        })
        .collect()
}

/// Audits every run; run `i` used `repos[i]` and a run branch named `branches[i]`.
pub async fn verify_runs(
    client: &reqwest::Client,
    base: &str,
    ids: &[String],
    repos: &[&Repo],
    branches: &[String],
    dir: &Path,
    tasks: usize,
) -> Report {
    let mut r = Report::default();
    for (i, id) in ids.iter().enumerate() {
        let run = json(client, &format!("{base}/runs/{id}")).await;
        let status = run["run"]["status"].as_str().unwrap_or("?").to_string();
        if status == "COMPLETED" {
            r.completed += 1;
        } else {
            r.problems.push(format!(
                "run {id} ended {status}: {}",
                run["run"]["failure_reason"]
            ));
        }
        check_commits(
            client,
            base,
            id,
            i,
            repos[i],
            &branches[i],
            dir,
            tasks,
            &mut r,
        )
        .await;
        check_steps(client, base, id, &mut r).await;
    }
    r
}

#[allow(clippy::too_many_arguments)]
async fn check_commits(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    i: usize,
    repo: &Repo,
    branch: &str,
    dir: &Path,
    tasks: usize,
    r: &mut Report,
) {
    let Some(bundle) = bytes(client, &format!("{base}/runs/{id}/artifacts/run.bundle")).await
    else {
        r.lost += tasks;
        r.problems.push(format!("run {id}: no run.bundle"));
        return;
    };
    let file = dir.join(format!("final-{i}.bundle"));
    std::fs::write(&file, bundle).expect("write bundle");
    // The bundle's prerequisite is the run's starting commit: fetch it into a clone of the
    // repository the run started from.
    let clone = dir.join(format!("final-{i}"));
    let git = |args: &[&str], cwd: &Path| {
        Command::new("git")
            .args(args)
            .current_dir(cwd)
            .status()
            .is_ok_and(|s| s.success())
    };
    let ok = git(
        &[
            "clone",
            "-q",
            &repo.path.to_string_lossy(),
            &clone.to_string_lossy(),
        ],
        dir,
    ) && git(
        &[
            "fetch",
            "-q",
            &file.to_string_lossy(),
            &format!("{branch}:{branch}"),
        ],
        &clone,
    ) && git(&["checkout", "-q", branch], &clone);
    if !ok {
        r.lost += tasks;
        r.problems.push(format!(
            "run {id}: the bundle does not apply to the repository"
        ));
        return;
    }
    let subjects = subjects_at(&clone, "HEAD");
    for n in 1..=tasks {
        let want = format!("task {n}: task number {n}");
        match subjects.iter().filter(|s| **s == want).count() {
            1 => {}
            0 => {
                r.lost += 1;
                r.problems
                    .push(format!("run {id}: commit '{want}' missing"));
            }
            k => {
                r.duplicates += k - 1;
                r.problems
                    .push(format!("run {id}: commit '{want}' {k} times"));
            }
        }
    }
}

async fn check_steps(client: &reqwest::Client, base: &str, id: &str, r: &mut Report) {
    let steps = json(client, &format!("{base}/runs/{id}/steps")).await;
    let events = sse(client, &format!("{base}/runs/{id}/events")).await;
    r.leases_expired += events.iter().filter(|(e, _)| e == "LEASE_EXPIRED").count();
    let output = sse(client, &format!("{base}/runs/{id}/output")).await;
    let mut streamed: HashMap<String, Vec<u8>> = HashMap::new();
    for (_, d) in &output {
        let step = d["step_id"].as_str().unwrap_or_default().to_string();
        streamed
            .entry(step)
            .or_default()
            .extend_from_slice(d["content"].as_str().unwrap_or_default().as_bytes());
    }
    for s in steps["steps"].as_array().into_iter().flatten() {
        if s["status"] != "SUCCEEDED" || s["phase"] == "merge" {
            continue;
        }
        let sid = s["id"].as_str().unwrap_or_default();
        for kind in ["STEP_STARTED", "STEP_FINISHED"] {
            if !events.iter().any(|(e, d)| e == kind && d["step_id"] == sid) {
                r.lost += 1;
                r.problems
                    .push(format!("run {id} step {sid}: no {kind} event"));
            }
        }
        let name = s["output_path"].as_str().unwrap_or_default();
        match bytes(client, &format!("{base}/runs/{id}/artifacts/{name}")).await {
            None => {
                r.lost += 1;
                r.problems
                    .push(format!("run {id} step {sid}: artifact {name} missing"));
            }
            Some(log) => {
                let got = streamed.get(sid).cloned().unwrap_or_default();
                if !got.ends_with(&log) {
                    r.lost += 1;
                    r.problems.push(format!(
                        "run {id} step {sid}: streamed output ({} bytes) does not end with the log ({} bytes)",
                        got.len(),
                        log.len()
                    ));
                }
            }
        }
    }
}
