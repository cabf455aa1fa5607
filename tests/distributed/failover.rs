//! A worker killed with SIGKILL in the middle of a step: the controller notices the silence,
//! takes the lease back and requeues the step, and the other worker runs it again from the
//! run's last checkpoint, so no task is lost or done twice.

use crate::cluster::{alive, hang_pids, now_ms, Cluster, Timings};
use crate::support::repo::Repo;
use crate::support::wait_for;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_of_a_killed_worker_is_requeued_and_finished_elsewhere_from_the_last_checkpoint() {
    let mut c = Cluster::start("kill9", 2, Timings::default()).await;
    let repo = Repo::create(c.dir.path(), "origin", 2, "slow 1", &[]);
    let id = c.submit_git(&repo, &[]).await;

    // The second implementation step runs on top of the first one's checkpoint.
    let step = c
        .wait_step(&id, "the second implementation step to run", |s| {
            s["phase"] == "implementation" && s["attempt"] == 2 && s["status"] == "IN_PROGRESS"
        })
        .await;
    let step_id = step["id"].as_str().expect("step id").to_string();
    let holder = c
        .index_of(step["worker_id"].as_str().expect("worker"))
        .await;
    let holder_id = step["worker_id"].clone();
    let killed_ms = now_ms();
    c.workers[holder].kill9();

    let run = c.wait_status(&id, "COMPLETED").await;
    let steps = c.steps(&id).await;
    let again = steps
        .iter()
        .find(|s| s["id"] == step_id.as_str())
        .expect("the killed step");
    assert_eq!(again["status"], "SUCCEEDED", "{again}");
    assert_eq!(again["infra_attempts"], 1, "one lost lease: {again}");
    assert_ne!(
        again["worker_id"], holder_id,
        "finished by the other worker"
    );
    assert_eq!(again["lease_epoch"], 2, "granted a second time: {again}");

    let events = c.events(&id).await;
    let released = events
        .iter()
        .find(|e| e["event_type"] == "LEASE_RELEASED" && e["step_id"] == step_id.as_str())
        .unwrap_or_else(|| panic!("no LEASE_RELEASED for the killed step: {events:#?}"));
    assert_eq!(
        released["payload"]["reason"], "worker offline",
        "{released}"
    );
    assert_eq!(released["payload"]["worker_id"], holder_id);
    // Taken back because the worker went silent (its last heartbeat was at most one
    // interval before the kill), well before its lease would have expired.
    let t = &c.timings;
    let after = released["timestamp"].as_i64().expect("timestamp") - killed_ms;
    assert!(
        after >= (t.offline_after - t.heartbeat) as i64 && after < t.lease_ttl as i64,
        "requeued {after} ms after the kill (offline after {} ms, TTL {} ms)",
        t.offline_after,
        t.lease_ttl
    );
    assert!(
        !events.iter().any(|e| e["event_type"] == "LEASE_EXPIRED"),
        "no lease had to expire: {events:#?}"
    );
    assert_eq!(run["status"], "COMPLETED");

    let subjects = c.bundle_subjects(&repo, &id).await;
    assert_eq!(
        subjects,
        ["initial", "task 1: task number 1", "task 2: task number 2"],
        "each task's commit exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_kills_the_step_processes_its_killed_predecessor_left() {
    let mut c = Cluster::start("leftovers", 1, Timings::default()).await;
    let repo = Repo::create(c.dir.path(), "origin", 1, "hang", &[]);
    let id = c.submit_git(&repo, &[]).await;
    c.wait_step(&id, "the step to run", |s| s["status"] == "IN_PROGRESS")
        .await;
    let clone = c.workers[0].data_dir.join("work/clones").join(&id);
    let pids = hang_pids(&clone).await;
    c.workers[0].kill9();
    // The agent's shell dies with loopd (its parent-death signal); its child lives on in the
    // step's process group.
    assert!(
        alive(pids[1]),
        "SIGKILL of loopd leaves the agent's child running"
    );

    c.workers[0].start();
    let pids = &pids;
    wait_for(
        "the leftover agent to be killed",
        Duration::from_secs(30),
        || async move { pids.iter().all(|p| !alive(*p)).then_some(()) },
    )
    .await;
    assert_eq!(c.control(&id, "cancel").await, 204);
}
