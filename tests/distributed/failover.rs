//! Lost workers. One killed with SIGKILL in the middle of a step: the controller notices the
//! silence, takes the lease back and requeues the step, and the other worker runs it again
//! from the run's last checkpoint, so no task is lost or done twice. One frozen past the
//! offline timeout: what its abandoned attempt did (commits, output) is not reused when it
//! claims the step again. One restarted after SIGKILL: it kills what its predecessor left.

use crate::cluster::{now_ms, Cluster, Timings};
use crate::support::repo::Repo;
use crate::support::wait_for;
use crate::support::{alive, hang_pids};
use nix::sys::signal::Signal;
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
    // Taken back because the worker went silent (its last heartbeat came shortly before the
    // kill; half the limit leaves room for a slow machine), well before the lease's expiry.
    let t = &c.timings;
    let after = released["timestamp"].as_i64().expect("timestamp") - killed_ms;
    assert!(
        after >= (t.offline_after / 2) as i64 && after < t.lease_ttl as i64,
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
async fn a_worker_frozen_past_the_offline_timeout_discards_its_step_and_redoes_it_cleanly() {
    let c = Cluster::start("frozen", 1, Timings::default()).await;
    let repo = Repo::create(c.dir.path(), "origin", 1, "drip 20", &[]);
    let id = c.submit_git(&repo, &[]).await;
    let step = c
        .wait_step(&id, "the first step to run", |s| {
            s["status"] == "IN_PROGRESS"
        })
        .await;
    let step_id = step["id"].as_str().expect("id").to_string();
    let worker = &c.workers[0];
    // The agent's first line in the step's log: it runs (the prompt file alone is written
    // before the agent is spawned, and a freeze in between would leave no agent to commit).
    let log = worker
        .data_dir
        .join("work/steps")
        .join(&step_id)
        .join("iter-01-impl.log");
    let log = &log;
    wait_for(
        "the agent to start",
        Duration::from_secs(30),
        || async move {
            let text = std::fs::read_to_string(log).ok()?;
            text.contains("drip line 1 of 20").then_some(())
        },
    )
    .await;

    // Freeze loopd (not its agent, which runs in its own process group) until the controller
    // has taken the lease back and the agent has committed its work in the worker's clone.
    worker.signal(Signal::SIGSTOP);
    c.wait_step(&id, "the step to be requeued", |s| {
        s["id"] == step_id.as_str() && s["status"] == "RETRYING"
    })
    .await;
    let clone = worker.data_dir.join("work/clones").join(&id);
    let clone = &clone;
    wait_for(
        "the orphaned attempt to commit",
        Duration::from_secs(30),
        || async move {
            let out = std::process::Command::new("git")
                .args(["log", "-1", "--format=%s"])
                .current_dir(clone)
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout)
                .starts_with("task 1")
                .then_some(())
        },
    )
    .await;
    worker.signal(Signal::SIGCONT);

    c.wait_status(&id, "COMPLETED").await;
    let steps = c.steps(&id).await;
    let first = &steps[0];
    assert_eq!(first["id"], step_id.as_str());
    assert_eq!(first["lease_epoch"], 2, "{first}");
    let impls = steps
        .iter()
        .filter(|s| s["phase"] == "implementation")
        .count();
    assert_eq!(
        impls, 2,
        "the accepted attempt did task 1 itself (the discarded one's commit was not reused), \
         then the completion: {steps:#?}"
    );
    let log = String::from_utf8(c.download(&id, "iter-01-impl.log").await).expect("UTF-8");
    assert_eq!(
        log.matches("drip line 1 of 20").count(),
        1,
        "the log artifact holds only the accepted attempt: {log}"
    );
    let subjects = c.bundle_subjects(&repo, &id).await;
    assert_eq!(subjects, ["initial", "task 1: task number 1"]);
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

    // The step may have been claimed again meanwhile: cancel it and leave nothing behind.
    assert_eq!(c.control(&id, "cancel").await, 204);
    c.wait_step(&id, "the step to be cancelled", |s| {
        s["status"] == "CANCELED"
    })
    .await;
    let again = std::fs::read_to_string(clone.join(".hang.pids")).unwrap_or_default();
    let again: Vec<i32> = again
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    let again = &again;
    wait_for(
        "every agent to be gone",
        Duration::from_secs(30),
        || async move { again.iter().all(|p| !alive(*p)).then_some(()) },
    )
    .await;
}
