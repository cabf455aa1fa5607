//! A completion that asks for the worker's next step (`"claim_next": true`): the answer
//! carries it, leased as a claim would lease it; a refused completion claims nothing; a
//! draining worker gets nothing; a completion that does not ask answers `{}` as before.

use crate::harness::{refused, Ctl, Lease, Worker};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use serde_json::{json, Value};

const LONG: &[(&str, &str)] = &[
    ("LOOPD__LEASE__TTL_MS", "600000"),
    ("LOOPD__LEASE__WORKER_OFFLINE_AFTER_MS", "600000"),
];

fn asking(l: &Lease) -> Value {
    let mut body = Worker::completion(l);
    body["claim_next"] = json!(true);
    body
}

/// The event numbers of a run, in order.
fn run_seqs(ctl: &Ctl, run: &str) -> Vec<i64> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        run_seq: i64,
    }
    let rows: Vec<Row> =
        diesel::sql_query("SELECT run_seq FROM events WHERE run_id = $1 ORDER BY run_seq")
            .bind::<Text, _>(run)
            .load(&mut ctl.pg())
            .expect("run events");
    rows.into_iter().map(|r| r.run_seq).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_that_asks_gets_the_next_step_leased() {
    let ctl = Ctl::start("ctl-next", LONG).await;
    let w = ctl.worker("w", &[]).await;
    let run = ctl.submit("next", 2, &[]).await;
    let (first, _) = w.take().await;

    let (status, body) = w.complete(&first, &asking(&first)).await;
    assert_eq!(status, 200, "{body}");
    let a = &body["next"];
    assert_eq!(a["run_id"], run.as_str(), "no next step in {body}");
    let next = Lease {
        step: a["step_id"].as_str().unwrap().to_string(),
        run: run.clone(),
        epoch: a["epoch"].as_i64().unwrap(),
    };
    assert_ne!(next.step, first.step);
    // Leased as a claim leases: the step, its lease and its events.
    let s = ctl.step(&run, &next.step).await;
    assert_eq!(
        (s["status"].as_str(), s["worker_id"].as_str()),
        (Some("IN_PROGRESS"), Some(w.id.as_str()))
    );
    assert_eq!(ctl.step(&run, &first.step).await["status"], "SUCCEEDED");
    let granted = ctl.step_events(&next.step, &["LEASE_GRANTED", "STEP_STARTED"]);
    assert_eq!(granted.len(), 2, "{granted:?}");
    assert_eq!(granted[0].payload()["epoch"], next.epoch);
    assert_eq!(granted[0].payload()["worker_id"], w.id.as_str());
    assert!(a["prompt"].as_str().is_some_and(|p| !p.is_empty()), "{a}");
    let seqs = run_seqs(&ctl, &run);
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>(), "gaps");
    // The flag is not part of the completion: the same completion without it is a repeat.
    let before = ctl.snapshot();
    let (status, body) = w.complete(&first, &Worker::completion(&first)).await;
    assert_eq!(
        (status, body),
        (200, json!({})),
        "not taken as the same completion"
    );
    assert_eq!(ctl.snapshot(), before);

    // It is this worker's lease: its heartbeat keeps it, its completion is accepted. A
    // completion that does not ask answers as it always did, and leaves the step after it
    // queued for anyone.
    let (_, hb) = w.heartbeat("busy", &[&next]).await;
    assert_eq!(hb["leases"][0]["action"], "continue", "{hb}");
    let (status, body) = w.complete(&next, &Worker::completion(&next)).await;
    assert_eq!((status, body), (200, json!({})));
    let third = ctl.queued_step(&run).await;
    assert_eq!(ctl.step(&run, &third).await["worker_id"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_completion_claims_nothing_and_a_draining_worker_gets_nothing() {
    let ctl = Ctl::start("ctl-next-refused", LONG).await;
    let w = ctl.worker("w", &[]).await;
    let run = ctl.submit("next-refused", 3, &[]).await;
    let (lease, _) = w.take().await;

    // A stale epoch: refused, and nothing claimed or written.
    let before = ctl.snapshot();
    let stale = Lease {
        epoch: lease.epoch + 1,
        ..lease.clone()
    };
    refused(
        &w.complete(&stale, &asking(&stale)).await,
        409,
        "stale_lease",
    );
    assert_eq!(ctl.snapshot(), before);

    // Draining: the completion is recorded, no step is leased with it.
    assert_eq!(w.heartbeat("draining", &[&lease]).await.0, 200);
    let (status, body) = w.complete(&lease, &asking(&lease)).await;
    assert_eq!((status, body), (200, json!({})));
    assert_eq!(ctl.step(&run, &lease.step).await["status"], "SUCCEEDED");
    let queued = ctl.queued_step(&run).await;
    assert_eq!(ctl.step(&run, &queued).await["worker_id"], Value::Null);
    assert!(ctl.step_events(&queued, &["LEASE_GRANTED"]).is_empty());
}
