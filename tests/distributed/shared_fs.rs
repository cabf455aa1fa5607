//! shared_fs runs on remote workers: the controller creates the run's worktree and the worker
//! works in the path the assignment names. A path the worker cannot see, or a repository it
//! cannot clone, fails the step with a reason that says so.

use crate::cluster::{path_str, Cluster, Timings};
use crate::support::repo::Repo;
use crate::support::wait_for;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_fs_run_completes_on_remote_workers_in_the_worktree_the_assignment_names() {
    let c = Cluster::start("shared-fs", 2, Timings::default()).await;
    let repo = Repo::create(
        c.dir.path(),
        "ws",
        2,
        "tick",
        &["verify_cmds=test -f PLAN.md"],
    );
    let id = c
        .submit(json!({
            "spec_path": "specs/demo.md",
            "plan_path": "PLAN.md",
            "workspace_root": path_str(&repo.path),
        }))
        .await;
    let run = c.wait_status(&id, "COMPLETED").await;
    assert_eq!(run["workspace_source"], "shared_fs");
    let worktree = run["worktree"]["worktree_path"].as_str().expect("worktree");
    let branch = run["worktree"]["run_branch"].as_str().expect("run branch");
    assert!(
        std::path::Path::new(worktree).join("task-2.txt").is_file(),
        "the agent worked in the run's worktree {worktree}"
    );
    assert_eq!(
        repo.subjects(branch),
        ["initial", "task 1: task number 1", "task 2: task number 2"]
    );
    let steps = c.steps(&id).await;
    for s in &steps {
        let index = c.index_of(s["worker_id"].as_str().expect("worker")).await;
        assert!(index < 2, "ran on a remote worker: {s}");
    }
    let log = c
        .artifacts(&id)
        .await
        .into_iter()
        .find(|a| a["name"] == "iter-01-impl.log")
        .expect("the first implementation log is listed");
    assert!(
        c.lease_object(&id, &log, &steps).is_some(),
        "stored under its lease's prefix"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worktree_missing_on_the_worker_fails_the_step_with_a_clear_reason() {
    let mut c = Cluster::start("shared-fs-missing", 0, Timings::default()).await;
    let repo = Repo::create(c.dir.path(), "ws", 1, "tick", &[]);
    // No worker has the label yet: the run starts and waits with its worktree created.
    let id = c
        .submit(json!({
            "spec_path": "specs/demo.md",
            "plan_path": "PLAN.md",
            "workspace_root": path_str(&repo.path),
            "labels": ["late"],
        }))
        .await;
    let what = "the run to start with its worktree";
    let run = wait_for(what, Duration::from_secs(30), || async {
        Some(c.run(&id).await).filter(|r| r["worktree"]["worktree_path"].is_string())
    })
    .await;
    let worktree = run["worktree"]["worktree_path"].as_str().expect("worktree");
    std::fs::remove_dir_all(worktree).expect("remove the worktree");

    c.add_worker(&["late"], &[]).await;
    let run = c.wait_status(&id, "FAILED").await;
    let reason = run["failure_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("workspace path missing on this worker") && reason.contains(worktree),
        "{reason}"
    );
    let steps = c.steps(&id).await;
    assert_eq!(steps[0]["status"], "FAILED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_the_worker_cannot_clone_fails_the_step_with_a_clear_reason() {
    let mut c = Cluster::start("clone-fails", 0, Timings::default()).await;
    let repo = Repo::create(c.dir.path(), "origin", 1, "tick", &[]);
    let id = c.submit_git(&repo, &["late"]).await;
    c.wait_status(&id, "RUNNING").await;
    // The controller read the repository at submission; now it is gone.
    std::fs::rename(&repo.path, c.dir.path().join("moved")).expect("move the repository");

    c.add_worker(&["late"], &[]).await;
    let run = c.wait_status(&id, "FAILED").await;
    let reason = run["failure_reason"].as_str().unwrap_or_default();
    assert_eq!(
        reason,
        format!(
            "runner_execution_failed:cannot prepare the clone: cannot fetch {}: repository not found",
            repo.path.display()
        )
    );
}

/// The controller's side of the scheduler wedge of issue 26: a run whose workspace cannot be
/// set up (a base branch that does not exist) fails at once, and the controller goes on
/// starting runs: a valid run in another workspace then completes on a real worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_fails_at_setup_does_not_stop_later_runs_from_starting_on_the_pool() {
    let c = Cluster::start("setup-failure", 1, Timings::default()).await;
    let bad = Repo::create(c.dir.path(), "bad", 1, "tick", &["reviewer=false"]);
    let good = Repo::create(c.dir.path(), "good", 1, "tick", &["reviewer=false"]);
    let body = |repo: &Repo, extra: serde_json::Value| {
        let mut b = json!({
            "spec_path": "specs/demo.md",
            "plan_path": "PLAN.md",
            "workspace_root": path_str(&repo.path),
        });
        if let (Some(o), Some(x)) = (b.as_object_mut(), extra.as_object()) {
            o.extend(x.clone());
        }
        b
    };
    let failed = c.submit(body(&bad, json!({"base_branch": "nope"}))).await;
    c.wait_status(&failed, "FAILED").await;
    assert!(
        c.steps(&failed).await.is_empty(),
        "a run failed at setup ran no step"
    );
    let why = c
        .events(&failed)
        .await
        .into_iter()
        .find(|e| e["event_type"] == "RUN_FAILED")
        .map(|e| e["payload"]["reason"].to_string())
        .unwrap_or_default();
    assert!(
        why.contains("nope"),
        "RUN_FAILED names the missing branch: {why}"
    );
    let ok = c.submit(body(&good, json!({}))).await;
    c.wait_status(&ok, "COMPLETED").await;
    let steps = c.steps(&ok).await;
    let worker = steps[0]["worker_id"].as_str().expect("a worker ran it");
    assert_eq!(
        c.index_of(worker).await,
        0,
        "the pool's worker ran the step"
    );
}
