//! A single host killed with SIGKILL in the middle of a step: restarted on the same data dir,
//! it kills the agent its predecessor left running, queues the interrupted step again (from a
//! fresh step directory) and finishes the run; no step is left IN_PROGRESS. Paused (SIGSTOP)
//! past its lease instead, it keeps the step it was running.

use crate::helpers::{Single, STATE_TIMEOUT};
use crate::support::{alive as pid_alive, hang_pids, wait_for};
use nix::sys::signal::Signal;
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

/// The newest lease expiry in the daemon's SQLite file and the time now, in ms (read while the
/// daemon is stopped: WAL lets a reader in).
fn lease_expiry_and_now(db: &std::path::Path) -> Option<(i64, i64)> {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
        expires_at: Option<i64>,
    }
    let mut c = SqliteConnection::establish(db.to_str()?).ok()?;
    let r: Row = diesel::sql_query("SELECT max(expires_at) AS expires_at FROM leases")
        .get_result(&mut c)
        .ok()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_millis() as i64;
    Some((r.expires_at?, now))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_paused_past_its_lease_keeps_its_running_step() {
    let s = Single::start(
        "paused",
        &[
            ("LOOPD__LEASE__TTL_MS", "3000"),
            ("LOOPD__LEASE__SWEEP_INTERVAL_MS", "100"),
            ("LOOPD__WORKER__HEARTBEAT_INTERVAL_MS", "200"),
        ],
    )
    .await;
    let repo = s.repo("ws", 1, "slow 3", &["reviewer=false"]);
    let id = s.create(&repo, json!({})).await;
    let step = s.wait_step_in_progress(&id).await;

    // As a laptop's lid closed on it: the daemon stops running (its agent does not) until its
    // lease has been past its expiry for a second.
    s.daemon.signal(Signal::SIGSTOP);
    let db = s.daemon.data_dir.join("loopd.db");
    wait_for(
        "the lease to be a second past its expiry",
        STATE_TIMEOUT,
        || {
            let db = db.clone();
            async move {
                let (expires, now) = lease_expiry_and_now(&db)?;
                (now > expires + 1000).then_some(())
            }
        },
    )
    .await;
    s.daemon.signal(Signal::SIGCONT);

    s.wait_status(&id, "COMPLETED").await;
    let steps = s.steps(&id).await;
    let same = steps
        .iter()
        .find(|st| st["id"] == step["id"])
        .expect("the paused step");
    assert_eq!(same["status"], "SUCCEEDED", "{same}");
    assert_eq!(
        same["lease_epoch"], step["lease_epoch"],
        "never leased again"
    );
    let events = s.events(&id).await;
    let lost: Vec<&str> = (events.iter())
        .map(|e| e.event_type.as_str())
        .filter(|t| matches!(*t, "LEASE_EXPIRED" | "LEASE_RELEASED"))
        .collect();
    assert!(lost.is_empty(), "the lease was taken back: {lost:?}");
    let starts = (events.iter())
        .filter(|e| {
            e.event_type == "STEP_STARTED" && e.step_id == step["id"].as_str().map(String::from)
        })
        .count();
    assert_eq!(starts, 1, "the step ran once");
}
