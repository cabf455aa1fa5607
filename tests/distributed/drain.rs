//! SIGTERM on a worker: it drains (status `draining`, no new claims), lets its running step
//! finish and exits 0; with a drain timeout shorter than the step it hands the lease back
//! without using up a retry; a second SIGTERM stops it at once and kills the step's process
//! group.

use crate::cluster::{Cluster, Timings};
use crate::support::repo::Repo;
use crate::support::wait_for;
use crate::support::{alive, hang_pids};
use nix::sys::signal::Signal;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Waits for the run's first step to be held by a worker; returns (step, worker index).
async fn first_step_held(c: &Cluster, id: &str) -> (Value, usize) {
    let step = c
        .wait_step(id, "the first step to be leased", |s| {
            s["status"] == "IN_PROGRESS" && s["worker_id"].is_string()
        })
        .await;
    let holder = c
        .index_of(step["worker_id"].as_str().expect("worker id"))
        .await;
    (step, holder)
}

fn lease_events<'a>(events: &'a [Value], kind: &str, worker: &Value) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["event_type"] == kind && e["payload"]["worker_id"] == *worker)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_running_step_finish_and_the_worker_exits_cleanly() {
    let mut c = Cluster::start("drain-finish", 2, Timings::default()).await;
    let repo = Repo::create(c.dir.path(), "origin", 1, "slow 2", &[]);
    let id = c.submit_git(&repo, &[]).await;
    let (step, holder) = first_step_held(&c, &id).await;
    let holder_id = step["worker_id"].clone();

    c.signal_worker(holder, Signal::SIGTERM);
    let draining = c.wait_worker_status(holder, "draining").await;
    assert_eq!(
        draining["leases"].as_array().map(Vec::len),
        Some(1),
        "still holds its step while draining: {draining}"
    );
    let status = c.workers[holder].wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "a drained worker exits 0: {status:?}");

    c.wait_status(&id, "COMPLETED").await;
    let steps = c.steps(&id).await;
    let first = &steps[0];
    assert_eq!(first["id"], step["id"]);
    assert_eq!(first["status"], "SUCCEEDED");
    assert_eq!(
        first["worker_id"], holder_id,
        "the draining worker finished it"
    );
    assert_eq!(first["lease_epoch"], 1, "never handed back: {first}");
    assert!(
        steps[1..].iter().all(|s| s["worker_id"] != holder_id),
        "no step after the drain ran on the drained worker: {steps:#?}"
    );
    let events = c.events(&id).await;
    assert_eq!(
        lease_events(&events, "LEASE_GRANTED", &holder_id).len(),
        1,
        "the draining worker claimed nothing new: {events:#?}"
    );
    assert!(lease_events(&events, "LEASE_RELEASED", &holder_id).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_drain_timeout_hands_the_lease_back_to_the_other_worker() {
    let t = Timings {
        drain_timeout: 300,
        ..Timings::default()
    };
    let mut c = Cluster::start("drain-timeout", 2, t).await;
    let repo = Repo::create(c.dir.path(), "origin", 1, "slow 3", &[]);
    let id = c.submit_git(&repo, &[]).await;
    let (step, holder) = first_step_held(&c, &id).await;
    let holder_id = step["worker_id"].clone();

    c.signal_worker(holder, Signal::SIGTERM);
    let status = c.workers[holder].wait_exit(Duration::from_secs(20)).await;
    assert!(
        status.success(),
        "the worker exits 0 after handing back: {status:?}"
    );

    c.wait_status(&id, "COMPLETED").await;
    let steps = c.steps(&id).await;
    let first = &steps[0];
    assert_eq!(first["id"], step["id"]);
    assert_eq!(first["status"], "SUCCEEDED");
    assert_ne!(
        first["worker_id"], holder_id,
        "the other worker finished it"
    );
    assert_eq!(first["lease_epoch"], 2, "granted twice: {first}");
    assert_eq!(
        first["infra_attempts"], 0,
        "a hand-back is not a lost lease"
    );
    let events = c.events(&id).await;
    let released = lease_events(&events, "LEASE_RELEASED", &holder_id);
    assert_eq!(released.len(), 1, "{events:#?}");
    assert_eq!(released[0]["step_id"], step["id"]);
    assert_eq!(released[0]["payload"]["epoch"], 1);
    let subjects = c.bundle_subjects(&repo, &id).await;
    assert_eq!(subjects, ["initial", "task 1: task number 1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_stops_at_once_and_kills_the_step_s_process_group() {
    let mut c = Cluster::start("drain-twice", 1, Timings::default()).await;
    let repo = Repo::create(c.dir.path(), "origin", 1, "hang", &[]);
    let id = c.submit_git(&repo, &[]).await;
    let (step, holder) = first_step_held(&c, &id).await;
    let clone = c.workers[holder].data_dir.join("work/clones").join(&id);
    let pids = hang_pids(&clone).await;

    c.signal_worker(holder, Signal::SIGTERM);
    c.wait_worker_status(holder, "draining").await;
    assert!(
        pids.iter().all(|p| alive(*p)),
        "draining leaves the step running"
    );
    let second = Instant::now();
    c.signal_worker(holder, Signal::SIGTERM);
    let status = c.workers[holder].wait_exit(Duration::from_secs(20)).await;
    let took = second.elapsed();
    assert!(status.success(), "{status:?}");
    let bound = Duration::from_millis(c.timings.kill_grace) + Duration::from_secs(3);
    assert!(took < bound, "stopped in {took:?}, not at once");
    assert!(
        pids.iter().all(|p| !alive(*p)),
        "the agent and its child are killed: {pids:?}"
    );

    // The lease was handed back: the step waits for another worker, no retry used.
    let what = "the step to be queued again";
    let again = wait_for(what, Duration::from_secs(10), || async {
        c.steps(&id)
            .await
            .into_iter()
            .find(|s| s["id"] == step["id"] && s["status"] == "RETRYING")
    })
    .await;
    assert_eq!(again["infra_attempts"], 0, "{again}");
    assert_eq!(c.control(&id, "cancel").await, 204);
}
