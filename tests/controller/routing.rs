//! Routing: a run's required labels decide which workers may take its steps (and its
//! `waiting_reason` says so while none online has them); the worker that ran a run's previous
//! step is preferred for the next one within the affinity window.

use crate::harness::{Ctl, Worker};
use crate::support::wait_for;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_requiring_labels_goes_only_to_a_worker_with_them() {
    let ctl = Ctl::start(
        "ctl-labels",
        &[
            ("LOOPD__LEASE__TTL_MS", "600000"),
            ("LOOPD__LEASE__WORKER_OFFLINE_AFTER_MS", "600000"),
        ],
    )
    .await;
    let plain = ctl.worker("plain", &["cpu"]).await;
    let run = ctl.submit("labels", 2, &["gpu"]).await;
    assert_eq!(ctl.run(&run).await["labels"], serde_json::json!(["gpu"]));
    let r = wait_for("waiting_reason to name the label", T, || async {
        Some(ctl.run(&run).await).filter(|r| !r["waiting_reason"].is_null())
    })
    .await;
    assert_eq!(r["waiting_reason"], "no online worker has label gpu");

    assert_eq!(
        plain.claim(0).await.0,
        204,
        "a worker without the label got the step"
    );
    assert_eq!(
        plain.claim(800).await.0,
        204,
        "a long poll without the label got the step"
    );
    let step = ctl.queued_step(&run).await;

    let gpu = ctl.worker("gpu", &["gpu", "big"]).await;
    let (lease, _) = gpu.take().await;
    assert_eq!(
        (lease.run.as_str(), lease.step.as_str()),
        (run.as_str(), step.as_str())
    );
    wait_for("waiting_reason to clear", T, || async {
        Some(ctl.run(&run).await).filter(|r| r["waiting_reason"].is_null())
    })
    .await;
    // A run without labels may go to any worker.
    let any = ctl.submit("any", 2, &[]).await;
    let (l2, _) = plain.take().await;
    assert_eq!(l2.run, any);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_steps_worker_is_preferred_within_the_window() {
    let ctl = Ctl::start(
        "ctl-affinity",
        &[
            ("LOOPD__LEASE__TTL_MS", "600000"),
            ("LOOPD__LEASE__WORKER_OFFLINE_AFTER_MS", "600000"),
            ("LOOPD__SCHEDULER__AFFINITY_WINDOW_MS", "120000"),
        ],
    )
    .await;
    let a = ctl.worker("a", &[]).await;
    let b = ctl.worker("b", &[]).await;
    let run = ctl.submit("affinity", 3, &[]).await;
    let (first, _) = a.take().await;
    assert_eq!(a.complete(&first, &Worker::completion(&first)).await.0, 200);
    let next = ctl.queued_step(&run).await;
    assert_ne!(next, first.step);

    // The next step waits for A: B gets nothing, though the step is claimable.
    assert_eq!(
        b.claim(0).await.0,
        204,
        "B took the step A is preferred for"
    );
    assert_eq!(
        b.claim(800).await.0,
        204,
        "B's long poll took the step A is preferred for"
    );
    assert_eq!(ctl.step(&run, &next).await["status"], "QUEUED");
    let (second, _) = a.take().await;
    assert_eq!(second.step, next);
    assert_eq!(ctl.step(&run, &next).await["worker_id"], a.id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_affinity_window_another_worker_takes_the_step() {
    let window_ms = 1500;
    let ctl = Ctl::start(
        "ctl-window",
        &[
            ("LOOPD__LEASE__TTL_MS", "600000"),
            ("LOOPD__LEASE__WORKER_OFFLINE_AFTER_MS", "600000"),
            ("LOOPD__SCHEDULER__AFFINITY_WINDOW_MS", "1500"),
        ],
    )
    .await;
    let a = ctl.worker("a", &[]).await;
    let b = ctl.worker("b", &[]).await;
    let run = ctl.submit("window", 3, &[]).await;
    let (first, _) = a.take().await;
    assert_eq!(a.complete(&first, &Worker::completion(&first)).await.0, 200);
    let next = ctl.queued_step(&run).await;
    // A never claims again: B's long poll gets the step, once the window has passed.
    let (second, _) = b.take().await;
    assert_eq!(second.step, next);
    let granted = ctl.step_events(&next, &["LEASE_GRANTED"]);
    assert_eq!(granted.len(), 1);
    assert_eq!(granted[0].payload()["worker_id"], b.id.as_str());
    assert!(
        granted[0].created_at - ctl.queued_at(&next) >= window_ms,
        "granted to another worker inside the window"
    );
}
