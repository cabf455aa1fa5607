//! Leases under short timings: a silent worker loses its lease by TTL (and everything it writes
//! afterwards is stale and changes nothing), a worker that goes offline loses it before the
//! TTL, and a step that keeps losing leases fails after the configured number of losses.
//! Orderings are read from stored events and database timestamps, never from the wall clock.

use crate::db::Event;
use crate::harness::{refused, Ctl, Lease, Worker};
use crate::support::wait_for;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// Position of the first event of `kind` whose payload has this epoch.
fn pos(events: &[Event], kind: &str, epoch: i64) -> usize {
    events
        .iter()
        .position(|e| e.event_type == kind && e.payload()["epoch"] == epoch)
        .unwrap_or_else(|| panic!("no {kind} for epoch {epoch} in {events:#?}"))
}

async fn wait_step(ctl: &Ctl, run: &str, step: &str, status: &str) -> serde_json::Value {
    wait_for(&format!("step {step} {status}"), T, || async {
        Some(ctl.step(run, step).await).filter(|s| s["status"] == status)
    })
    .await
}

/// A's writes after it lost the lease: all 409 stale_lease, none with an effect.
async fn late_writes_are_stale(ctl: &Ctl, a: &Worker, old: &Lease) {
    let (before, out) = (ctl.snapshot(), ctl.output_size(&old.run, &old.step));
    refused(
        &a.output(old, out, "late output\n").await,
        409,
        "stale_lease",
    );
    refused(&a.event(old, "LATE_NOTE").await, 409, "stale_lease");
    refused(
        &a.artifact(old, "late.txt", b"late").await,
        409,
        "stale_lease",
    );
    refused(
        &a.complete(old, &Worker::completion(old)).await,
        409,
        "stale_lease",
    );
    refused(&a.release(old).await, 409, "stale_lease");
    assert_eq!(ctl.snapshot(), before, "a stale write changed the database");
    assert_eq!(
        ctl.output_size(&old.run, &old.step),
        out,
        "stale output was kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_worker_loses_its_lease_and_after_two_losses_the_step_fails() {
    let ctl = Ctl::start(
        "ctl-expiry",
        &[
            ("LOOPD__LEASE__TTL_MS", "1500"),
            ("LOOPD__LEASE__SWEEP_INTERVAL_MS", "100"),
            ("LOOPD__LEASE__WORKER_OFFLINE_AFTER_MS", "600000"),
            ("LOOPD__SCHEDULER__MAX_INFRA_ATTEMPTS", "2"),
        ],
    )
    .await;
    let a = ctl.worker("a", &[]).await;
    let b = ctl.worker("b", &[]).await;
    let held = Arc::new(Mutex::new(Vec::new()));
    let beating = b.keep_alive(held.clone());
    let run = ctl.submit("expiry", 2, &[]).await;
    let (first, _) = a.take().await;
    assert_eq!(first.epoch, 1);
    assert_eq!(a.output(&first, 0, "partial\n").await.0, 202);

    // A says nothing more: its lease expires and the step waits to be claimed again.
    let s = wait_step(&ctl, &run, &first.step, "RETRYING").await;
    assert_eq!(s["infra_attempts"], 1);
    assert!(s["worker_id"].is_null() || s["worker_id"] == a.id.as_str());
    let (second, _) = b.take().await;
    held.lock().unwrap().push(second.clone());
    assert_eq!(
        (second.step.as_str(), second.epoch),
        (first.step.as_str(), 2)
    );
    let s = ctl.step(&run, &first.step).await;
    assert_eq!(
        (s["status"].as_str(), s["worker_id"].as_str()),
        (Some("IN_PROGRESS"), Some(b.id.as_str()))
    );

    let ev = ctl.step_events(
        &first.step,
        &["LEASE_GRANTED", "LEASE_EXPIRED", "LEASE_RELEASED"],
    );
    let (g1, x1, g2) = (
        pos(&ev, "LEASE_GRANTED", 1),
        pos(&ev, "LEASE_EXPIRED", 1),
        pos(&ev, "LEASE_GRANTED", 2),
    );
    assert!(
        g1 < x1 && x1 < g2,
        "granted(1) < expired(1) < granted(2): {ev:#?}"
    );
    assert_eq!(ev[x1].payload()["worker_id"], a.id.as_str());
    assert_eq!(ev[g2].payload()["worker_id"], b.id.as_str());
    assert!(
        ev.iter().all(|e| e.event_type != "LEASE_RELEASED"),
        "an expiry is not a release"
    );

    // Everything A still sends about its old lease is refused and changes nothing.
    late_writes_are_stale(&ctl, &a, &first).await;
    let (status, hb) = a.heartbeat("busy", &[&first]).await;
    assert_eq!(
        (status, hb["leases"][0]["action"].as_str()),
        (200, Some("stop"))
    );
    // B's writes at the new epoch go through.
    assert_eq!(
        b.output(&second, ctl.output_size(&run, &first.step), "b\n")
            .await
            .0,
        202
    );

    let metrics = ctl
        .client
        .get(ctl.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("loopd_lease_expired_total 1"), "{metrics}");
    assert!(metrics.contains("loopd_step_retry_total 1"), "{metrics}");

    // B goes silent too: the second loss uses up the retries and the step fails, saying why.
    drop(beating);
    let s = wait_step(&ctl, &run, &first.step, "FAILED").await;
    assert_eq!(s["infra_attempts"], 2);
    let reason = s["failure_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("lost its lease 2 times"),
        "step reason: {reason}"
    );
    let r = wait_for("the run to fail", T, || async {
        Some(ctl.run(&run).await).filter(|r| r["status"] == "FAILED")
    })
    .await;
    let why = r["failure_reason"].as_str().unwrap_or_default();
    assert!(why.contains("lost its lease"), "run reason: {why}");
    assert_eq!(ctl.step_events(&first.step, &["STEP_FAILED"]).len(), 1);
    late_writes_are_stale(&ctl, &b, &second).await;
    assert_eq!(
        ctl.steps(&run).await.len(),
        1,
        "nothing ran after the failure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_worker_loses_its_lease_before_the_ttl() {
    let ttl_ms = 600_000;
    let ctl = Ctl::start(
        "ctl-offline",
        &[
            ("LOOPD__LEASE__TTL_MS", "600000"),
            ("LOOPD__LEASE__WORKER_OFFLINE_AFTER_MS", "2000"),
        ],
    )
    .await;
    let b = ctl.worker("b", &[]).await;
    let _beating = b.keep_alive(Arc::new(Mutex::new(Vec::new())));
    let run = ctl.submit("offline", 2, &[]).await;
    let a = ctl.worker("a", &[]).await;
    let (lease, _) = a.take().await;
    assert_eq!(a.output(&lease, 0, "partial\n").await.0, 202);

    // A never heartbeats: it is marked offline and its lease is taken back at once.
    wait_step(&ctl, &run, &lease.step, "RETRYING").await;
    let offline = ctl.events(&["WORKER_OFFLINE"]);
    assert_eq!(offline.len(), 1, "only A went offline: {offline:#?}");
    assert_eq!(offline[0].payload()["worker_id"], a.id.as_str());
    assert!(offline[0].payload()["reason"].is_string());
    let ev = ctl.step_events(
        &lease.step,
        &["LEASE_GRANTED", "LEASE_RELEASED", "LEASE_EXPIRED"],
    );
    let (g, r) = (pos(&ev, "LEASE_GRANTED", 1), pos(&ev, "LEASE_RELEASED", 1));
    assert!(g < r);
    assert!(
        ev.iter().all(|e| e.event_type != "LEASE_EXPIRED"),
        "released, not expired"
    );
    let released = ev[r].payload();
    assert_eq!(released["worker_id"], a.id.as_str());
    assert_eq!(released["reason"], "worker offline");
    assert!(
        offline[0].created_at <= ev[r].created_at,
        "offline first, then the release"
    );
    let expires =
        chrono::DateTime::parse_from_rfc3339(ev[g].payload()["expires_at"].as_str().unwrap())
            .unwrap()
            .timestamp_millis();
    assert_eq!(expires, ev[g].created_at + ttl_ms, "granted for the TTL");
    assert!(
        ev[r].created_at < expires,
        "released before the lease would have expired"
    );
    assert_eq!(
        ctl.step(&run, &lease.step).await["infra_attempts"],
        1,
        "a lost worker counts"
    );

    // A is offline: its requests are refused as such, and change nothing.
    let before = ctl.snapshot();
    refused(&a.heartbeat("busy", &[&lease]).await, 409, "worker_offline");
    refused(
        &a.complete(&lease, &Worker::completion(&lease)).await,
        409,
        "worker_offline",
    );
    refused(&a.output(&lease, 8, "late\n").await, 409, "worker_offline");
    assert_eq!(ctl.snapshot(), before);
    assert_eq!(ctl.output_size(&run, &lease.step), 8);
    let workers = ctl
        .client
        .get(ctl.url("/workers"))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let row = workers["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == a.id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(row["status"], "offline");
    assert_eq!(row["leases"], serde_json::json!([]));

    // The step is claimed again by the live worker, one epoch on.
    let (again, _) = b.take().await;
    assert_eq!((again.step.as_str(), again.epoch), (lease.step.as_str(), 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_racing_the_expiry_of_its_lease_is_stale() {
    use diesel::prelude::*;
    use diesel::sql_types::{BigInt, Text};
    let ctl = Ctl::start(
        "ctl-race",
        &[
            ("LOOPD__LEASE__TTL_MS", "600000"),
            ("LOOPD__LEASE__WORKER_OFFLINE_AFTER_MS", "600000"),
        ],
    )
    .await;
    let w = ctl.worker("w", &[]).await;
    let run = ctl.submit("race", 2, &[]).await;
    let (lease, _) = w.take().await;

    // The expiry sweep's transaction, caught half way: the lease is cleared and the step put
    // back to RETRYING, not yet committed (these are the statements the sweep runs).
    let mut sweep = ctl.pg();
    diesel::sql_query("BEGIN").execute(&mut sweep).unwrap();
    diesel::sql_query(
        "UPDATE steps SET lease_granted_at = NULL, lease_expires_at = NULL WHERE id = $1",
    )
    .bind::<Text, _>(&lease.step)
    .execute(&mut sweep)
    .unwrap();
    diesel::sql_query(
        "UPDATE steps SET status = 'RETRYING', infra_attempts = infra_attempts + 1 WHERE id = $1",
    )
    .bind::<Text, _>(&lease.step)
    .execute(&mut sweep)
    .unwrap();

    // The completion arrives meanwhile: it must wait for the step's row, not pass the epoch
    // check on the lease being cleared.
    let done = {
        let (w, l) = (w.clone(), lease.clone());
        tokio::spawn(async move { w.complete(&l, &Worker::completion(&l)).await })
    };
    #[derive(QueryableByName)]
    struct Waiting {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    wait_for("the completion to wait for a lock", T, || async {
        let q = "SELECT count(*) AS n FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'";
        let w: Waiting = diesel::sql_query(q).get_result(&mut ctl.pg()).unwrap();
        (w.n > 0).then_some(())
    })
    .await;
    diesel::sql_query("COMMIT").execute(&mut sweep).unwrap();

    refused(&done.await.unwrap(), 409, "stale_lease");
    let s = ctl.step(&run, &lease.step).await;
    assert_eq!(
        s["status"], "RETRYING",
        "the completion overwrote the requeue: {s}"
    );
    assert!(ctl.step_events(&lease.step, &["STEP_FINISHED"]).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_its_worker_never_heard_of_is_taken_back_long_before_its_ttl() {
    let ctl = Ctl::start(
        "ctl-unheard",
        &[
            ("LOOPD__LEASE__TTL_MS", "600000"),
            ("LOOPD__LEASE__WORKER_OFFLINE_AFTER_MS", "3000"),
        ],
    )
    .await;
    let a = ctl.worker("a", &[]).await;
    // A beats all along as if it held nothing: its claim's answer will be lost.
    let _beating = a.keep_alive(Arc::new(Mutex::new(Vec::new())));
    let run = ctl.submit("unheard", 1, &[]).await;
    let (lost, _) = a.take().await;
    let (status, body) = a.heartbeat("idle", &[]).await;
    assert_eq!(status, 200, "{body}");
    let s = ctl.step(&run, &lost.step).await;
    assert_eq!(
        (s["status"].as_str(), s["lease_epoch"].as_i64()),
        (Some("IN_PROGRESS"), Some(1)),
        "beats that leave it out for less than the offline limit take nothing back: the answer \
         may be on its way"
    );
    let released = wait_for("the lease to be taken back", T, || async {
        ctl.step_events(&lost.step, &["LEASE_RELEASED"])
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(released.payload()["epoch"], 1);
    assert_eq!(released.payload()["reason"], "not held by its worker");

    let b = ctl.worker("b", &[]).await;
    let (again, _) = b.take().await;
    assert_eq!((again.step.as_str(), again.epoch), (lost.step.as_str(), 2));
    let s = ctl.step(&run, &lost.step).await;
    assert_eq!(s["attempt"], 1, "a lost answer costs the step no attempt");
    refused(
        &a.complete(&lost, &Worker::completion(&lost)).await,
        409,
        "stale_lease",
    );
}
