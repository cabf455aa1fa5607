//! Long polls, heartbeat verdicts (`cancel`, `stop`), revocation requeueing leases, one token
//! per process (instance pinning), and draining workers taking nothing new.

use crate::harness::{answer, refused, Ctl, Lease, Worker};
use crate::support::pool::JOIN;
use crate::support::wait_for;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const LONG: &[(&str, &str)] = &[
    ("LOOPD__LEASE__TTL_MS", "600000"),
    ("LOOPD__LEASE__WORKER_OFFLINE_AFTER_MS", "600000"),
];
const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_returns_the_step_submitted_while_it_waits() {
    let ctl = Ctl::start("ctl-poll", LONG).await;
    let w = ctl.worker("w", &[]).await;

    // Nothing queued: 204 once wait_ms has passed.
    let t0 = Instant::now();
    let (status, body) = w.claim(700).await;
    assert_eq!((status, body), (204, Value::Null));
    assert!(
        t0.elapsed() >= Duration::from_millis(700),
        "answered before wait_ms"
    );

    // A claim waiting on the empty queue gets the step submitted meanwhile.
    let waiting = {
        let w = w.clone();
        tokio::spawn(async move {
            let t0 = Instant::now();
            let a = w.claim(25_000).await;
            (a, t0.elapsed())
        })
    };
    let run = ctl.submit_nowait("poll", 2, &[]).await;
    let ((status, a), took) = waiting.await.unwrap();
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["run_id"], run.as_str());
    assert!(
        took < Duration::from_millis(25_000),
        "the poll ran to its end: {took:?}"
    );
    let s = ctl.step(&run, a["step_id"].as_str().unwrap()).await;
    assert_eq!(
        (s["status"].as_str(), s["worker_id"].as_str()),
        (Some("IN_PROGRESS"), Some(w.id.as_str()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_say_cancel_for_a_cancelled_run_and_stop_for_a_lease_not_held() {
    let ctl = Ctl::start("ctl-verdicts", LONG).await;
    let w = ctl.worker("w", &[]).await;
    let run = ctl.submit("verdicts", 2, &[]).await;
    let (lease, _) = w.take().await;
    let wrong = Lease {
        epoch: lease.epoch + 1,
        ..lease.clone()
    };
    let ghost = Lease {
        step: "01900000-0000-7000-8000-000000000000".into(),
        ..lease.clone()
    };
    let (status, hb) = w.heartbeat("busy", &[&lease, &wrong, &ghost]).await;
    assert_eq!(status, 200, "{hb}");
    let actions: Vec<&str> = hb["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["continue", "stop", "stop"]);
    assert!(hb["leases"][1]["expires_at"].is_null());

    let (status, _) = answer(ctl.client.post(ctl.url(&format!("/runs/{run}/cancel")))).await;
    assert_eq!(status, 204);
    let (_, hb) = w.heartbeat("busy", &[&lease]).await;
    assert_eq!(hb["leases"][0]["action"], "cancel", "{hb}");
    // The worker kills the step and reports it; the step ends CANCELED.
    let mut done = Worker::completion(&lease);
    done["status"] = json!("failed");
    done["exit_code"] = json!(143);
    assert_eq!(w.complete(&lease, &done).await.0, 200);
    assert_eq!(ctl.step(&run, &lease.step).await["status"], "CANCELED");
    let (_, hb) = w.heartbeat("idle", &[&lease]).await;
    assert_eq!(hb["leases"][0]["action"], "stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_worker_requeues_its_leases_and_closes_its_token() {
    let ctl = Ctl::start("ctl-revoke", LONG).await;
    let a = ctl.worker("a", &[]).await;
    let b = ctl.worker("b", &[]).await;
    let run = ctl.submit("revoke", 2, &[]).await;
    let (lease, _) = a.take().await;
    let (status, _) = answer(ctl.client.delete(ctl.url(&format!("/workers/{}", a.id)))).await;
    assert_eq!(status, 204);
    let s = ctl.step(&run, &lease.step).await;
    assert_eq!(s["status"], "RETRYING", "requeued by the revocation");
    let rel = ctl.step_events(&lease.step, &["LEASE_RELEASED"]);
    assert_eq!(rel.len(), 1);
    assert_eq!(rel[0].payload()["reason"], "worker revoked");
    assert_eq!(rel[0].payload()["worker_id"], a.id.as_str());
    let before = ctl.snapshot();
    refused(&a.heartbeat("busy", &[&lease]).await, 401, "unauthorized");
    refused(
        &a.complete(&lease, &Worker::completion(&lease)).await,
        401,
        "unauthorized",
    );
    refused(&a.claim(0).await, 401, "unauthorized");
    assert_eq!(ctl.snapshot(), before);
    let (again, _) = b.take().await;
    assert_eq!(
        (again.step.as_str(), again.epoch),
        (lease.step.as_str(), lease.epoch + 1)
    );
    let (_, v) = answer(ctl.client.get(ctl.url("/workers"))).await;
    let row = v["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == a.id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(row["status"], "revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_token_serves_one_process() {
    let ctl = Ctl::start("ctl-instance", LONG).await;
    let hb = json!({"status": "idle"});

    // Registered with an instance id: only requests carrying it are served.
    let mut w = ctl.worker("w", &[]).await;
    let path = format!("/workers/{}/heartbeat", w.id);
    assert_eq!(w.post(&path, hb.clone()).await.0, 200);
    let first = w.instance.clone();
    let before = ctl.snapshot();
    for other in [Some("another-process".to_string()), None] {
        w.instance = other;
        refused(&w.post(&path, hb.clone()).await, 409, "duplicate_worker");
    }
    assert_eq!(ctl.snapshot(), before);
    w.instance = first;
    assert_eq!(w.post(&path, hb.clone()).await.0, 200);

    // Registered without one: pinned to the first instance it presents.
    let body =
        json!({"hostname": "old", "capabilities": {"labels": [], "slots": 1, "version": "0"}});
    let (status, r) = ctl.register(&body, JOIN).await;
    assert_eq!(status, 201, "{r}");
    let mut p = w.clone();
    p.id = r["worker_id"].as_str().unwrap().into();
    p.token = r["token"].as_str().unwrap().into();
    p.instance = Some("process-1".into());
    let path = format!("/workers/{}/heartbeat", p.id);
    assert_eq!(
        p.post(&path, hb.clone()).await.0,
        200,
        "the first process is served"
    );
    let mut copy = p.clone();
    copy.instance = Some("process-2".into());
    refused(&copy.post(&path, hb.clone()).await, 409, "duplicate_worker");
    copy.instance = None;
    refused(&copy.post(&path, hb.clone()).await, 409, "duplicate_worker");
    assert_eq!(
        p.post(&path, hb.clone()).await.0,
        200,
        "the first process still is"
    );
    // The pin is stored, so a restarted controller keeps it.
    wait_for("the pin to be stored", T, || async {
        ctl.instance_of(&p.id).filter(|i| i == "process-1")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_worker_gets_no_new_claims() {
    let ctl = Ctl::start("ctl-drain", LONG).await;
    let d = ctl.worker("d", &[]).await;
    assert_eq!(d.heartbeat("draining", &[]).await.0, 200);
    let run = ctl.submit("drain", 2, &[]).await;
    let (status, _) = d.claim(0).await;
    assert_eq!(status, 204, "a draining worker was given a step");
    let (status, _) = d.claim(20_000).await;
    assert_eq!(
        status, 204,
        "a draining worker's long poll was given a step"
    );
    let step = ctl.queued_step(&run).await;
    let r = wait_for("waiting_reason to name the drain", T, || async {
        Some(ctl.run(&run).await).filter(|r| !r["waiting_reason"].is_null())
    })
    .await;
    assert_eq!(
        r["waiting_reason"],
        "every online worker that could take it is draining"
    );

    // A long poll begun while idle gets nothing once the worker says it is draining.
    let e = ctl.worker("e", &[]).await;
    let (lease, _) = e.take().await;
    assert_eq!(lease.step, step);
    let done = Worker::completion(&lease);
    let waiting = {
        let e = e.clone();
        tokio::spawn(async move { e.claim(20_000).await })
    };
    assert_eq!(e.heartbeat("draining", &[]).await.0, 200);
    assert_eq!(e.complete(&lease, &done).await.0, 200);
    let next = ctl.queued_step(&run).await;
    let (status, _) = waiting.await.unwrap();
    assert_eq!(
        status, 204,
        "the poll of a draining worker was given a step"
    );
    assert!(
        ["QUEUED", "RETRYING"].contains(&ctl.step(&run, &next).await["status"].as_str().unwrap())
    );
    // Back to idle: it takes work again.
    assert_eq!(e.heartbeat("idle", &[]).await.0, 200);
    let (again, _) = e.take().await;
    assert_eq!(again.step, next);
}
