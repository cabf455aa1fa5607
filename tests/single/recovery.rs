//! A single host killed with SIGKILL in the middle of a step: restarted on the same data dir,
//! it kills the agent its predecessor left running, queues the interrupted step again (from a
//! fresh step directory) and finishes the run; no step is left IN_PROGRESS.

use crate::helpers::{Single, STATE_TIMEOUT};
use crate::support::{alive as pid_alive, hang_pids, wait_for};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_mid_step_requeues_the_step_and_completes_after_restart() {
    let mut s = Single::start("kill9", &[]).await;
    let repo = s.repo("ws", 1, "hang-once", &["reviewer=false"]);
    let id = s.create(&repo, json!({})).await;
    let step = s.wait_step_in_progress(&id).await;
    let run = s.run(&id).await;
    let wt = run["worktree"]["worktree_path"]
        .as_str()
        .expect("worktree")
        .to_string();
    let pids = hang_pids(std::path::Path::new(&wt)).await;

    s.daemon.kill9();
    // The agent's shell dies with its daemon (parent-death signal), but what it started, in
    // its process group, does not.
    let child = pids[1];
    assert!(
        pid_alive(child),
        "the agent's child {child} outlives the daemon"
    );

    s.daemon.start();
    s.daemon.wait_ready("/ready").await;
    wait_for(
        "the restarted daemon to kill its predecessor's agent",
        STATE_TIMEOUT,
        || async { pids.iter().all(|p| !pid_alive(*p)).then_some(()) },
    )
    .await;
    let done = s.wait_status(&id, "COMPLETED").await;

    let steps = s.steps(&id).await;
    assert!(
        steps.iter().all(|st| st["status"] == "SUCCEEDED"),
        "{steps:?}"
    );
    let again = steps
        .iter()
        .find(|st| st["id"] == step["id"])
        .expect("the interrupted step");
    assert!(
        again["lease_epoch"].as_i64() > step["lease_epoch"].as_i64(),
        "leased again: {again} after {step}"
    );
    // Its log is the second attempt's alone.
    let log = s.step_log(&id, &step["id"]).await;
    assert!(log.contains("Worked on: task number 1"), "{log}");
    assert!(!log.contains("hanging once"), "{log}");

    let events = s.events(&id).await;
    let released = events
        .iter()
        .find(|e| {
            e.event_type == "LEASE_RELEASED" && e.step_id == step["id"].as_str().map(String::from)
        })
        .expect("the restart released the lease of the interrupted step");
    assert_eq!(released.payload["epoch"], step["lease_epoch"]);
    let starts = events
        .iter()
        .filter(|e| e.event_type == "STEP_STARTED" && e.step_id == released.step_id)
        .count();
    assert_eq!(starts, 2, "the step started twice");
    assert_eq!(
        events.last().map(|e| e.event_type.as_str()),
        Some("RUN_COMPLETED")
    );
    let branch = done["worktree"]["run_branch"].as_str().expect("branch");
    assert_eq!(repo.subjects(branch), ["initial", "task 1: task number 1"]);
}
