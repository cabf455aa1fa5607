//! Single-host loops end to end: a real `loopd --role single` process, real git repositories,
//! the fake agent, and the `loopd` client verbs. The pipeline (runner notes, merge), the
//! watchdog, recovery after SIGKILL and the concurrency caps have their own modules.

#[path = "../support/mod.rs"]
mod support;

mod caps;
mod helpers;
mod log_dirs;
mod pipeline;
mod postmortem;
mod provider;
mod recovery;
mod review;
mod usage;
mod watchdog;
mod worktrees;

use serde_json::Value;
use std::process::Command;
use std::time::Duration;
use support::proc::{bin, Loopd};
use support::repo::Repo;
use support::{test_dir, wait_for};

/// Runs a client verb against `daemon` and returns (exit ok, stdout, stderr).
fn client(daemon: &Loopd, cwd: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .env("LOOPD_ADDR", daemon.url())
        .env_remove("LOOPD_TOKEN")
        .output()
        .expect("run client");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

async fn get_json(url: &str) -> Value {
    reqwest::get(url)
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON")
}

async fn wait_status(daemon: &Loopd, id: &str, want: &str) -> Value {
    let url = format!("{}/runs/{id}", daemon.url());
    let what = format!("run {id} to be {want} (log: {})", daemon.log.display());
    wait_for(&what, Duration::from_secs(60), || {
        let url = url.clone();
        async move {
            let v = get_json(&url).await;
            (v["run"]["status"] == want).then_some(v)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_task_plan_runs_to_completion_through_the_cli() {
    let dir = test_dir("three-tasks");
    let repo = Repo::create(
        dir.path(),
        "ws",
        3,
        "tick",
        &["verify_cmds=test -f PLAN.md"],
    );
    let daemon = Loopd::spawn(&dir.path().join("data"), &["--role", "single"], &[]);
    daemon.wait_ready("/ready").await;

    let (ok, out, err) = client(
        &daemon,
        &repo.path,
        &["run", "--json", "specs/demo.md", "PLAN.md"],
    );
    assert!(ok, "loopd run failed: {err}");
    let created: Value = serde_json::from_str(&out).expect("run --json prints the run");
    let id = created["run"]["id"].as_str().expect("run id").to_string();

    let done = wait_status(&daemon, &id, "COMPLETED").await;
    let branch = done["run"]["worktree"]["run_branch"]
        .as_str()
        .expect("run branch");
    let subjects = repo.subjects(branch);
    assert_eq!(
        subjects,
        [
            "initial",
            "task 1: task number 1",
            "task 2: task number 2",
            "task 3: task number 3"
        ],
        "one commit per task, in order"
    );

    let (ok, listing, _) = client(&daemon, &repo.path, &["list"]);
    assert!(ok);
    assert!(
        listing.contains(&id) && listing.contains("COMPLETED"),
        "{listing}"
    );
}
