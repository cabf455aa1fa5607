//! What an operator sees: `GET /workers`, `GET /metrics` (API.md §3), the worker and lease
//! events with their payloads, and controller log lines about a step that name its worker and
//! lease epoch — with no token anywhere in the log.

use crate::harness::{answer, Ctl, Worker, CLIENT};
use crate::support::pool::JOIN;
use serde_json::Value;
use std::time::Duration;

fn rfc3339(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_metrics_events_and_logs_show_the_pool() {
    let ctl = Ctl::start(
        "ctl-observe",
        &[
            ("LOOPD__LEASE__TTL_MS", "600000"),
            ("LOOPD__LEASE__WORKER_OFFLINE_AFTER_MS", "600000"),
        ],
    )
    .await;
    let a = ctl.worker("host-a", &["gpu"]).await;
    let b = ctl.worker("host-b", &[]).await;
    let run = ctl.submit("observe", 2, &[]).await;
    let (lease, _) = a.take().await;
    assert_eq!(a.heartbeat("busy", &[&lease]).await.0, 200);

    // GET /workers: the client's view of the pool and who holds what.
    let (status, v) = answer(ctl.client.get(ctl.url("/workers"))).await;
    assert_eq!(status, 200, "{v}");
    let rows = v["workers"].as_array().expect("workers");
    assert_eq!(rows.len(), 2);
    let row = rows
        .iter()
        .find(|w| w["id"] == a.id.as_str())
        .expect("a listed");
    assert_eq!(row["hostname"], "host-a");
    assert_eq!(row["status"], "busy");
    assert_eq!(row["labels"], serde_json::json!(["gpu"]));
    assert_eq!(row["slots"], 1);
    assert_eq!(row["version"], "test");
    assert!(
        rfc3339(&row["registered_at"]) && rfc3339(&row["last_heartbeat_at"]),
        "{row}"
    );
    assert_eq!(
        row["leases"],
        serde_json::json!([{"step_id": lease.step, "epoch": lease.epoch}])
    );
    let rb = rows
        .iter()
        .find(|w| w["id"] == b.id.as_str())
        .expect("b listed");
    assert_eq!(
        (rb["status"].as_str(), rb["leases"].clone()),
        (Some("idle"), serde_json::json!([]))
    );
    assert!(
        !v.to_string().contains(&a.token),
        "GET /workers shows a token"
    );

    // Release, claim again, complete: the lease events of the step, with their payloads.
    assert_eq!(a.release(&lease).await.0, 200);
    let (again, _) = b.take().await;
    assert_eq!(b.complete(&again, &Worker::completion(&again)).await.0, 200);
    let reg = ctl.events(&["WORKER_REGISTERED"]);
    let hosts: Vec<(Value, Value)> = reg
        .iter()
        .map(|e| {
            (
                e.payload()["worker_id"].clone(),
                e.payload()["hostname"].clone(),
            )
        })
        .collect();
    assert!(
        hosts.contains(&(a.id.as_str().into(), "host-a".into())),
        "{hosts:?}"
    );
    assert!(
        hosts.contains(&(b.id.as_str().into(), "host-b".into())),
        "{hosts:?}"
    );
    assert!(
        reg.iter().all(|e| e.run_id.is_none()),
        "worker events belong to no run"
    );
    let ev = ctl.step_events(
        &lease.step,
        &[
            "LEASE_GRANTED",
            "LEASE_RELEASED",
            "STEP_STARTED",
            "STEP_FINISHED",
        ],
    );
    let kinds: Vec<&str> = ev.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "LEASE_GRANTED",
            "STEP_STARTED",
            "LEASE_RELEASED",
            "LEASE_GRANTED",
            "STEP_STARTED",
            "STEP_FINISHED"
        ]
    );
    let g = ev[3].payload();
    assert_eq!(
        (
            g["step_id"].as_str(),
            g["worker_id"].as_str(),
            g["epoch"].as_i64()
        ),
        (Some(lease.step.as_str()), Some(b.id.as_str()), Some(2))
    );
    assert!(rfc3339(&g["expires_at"]));
    let r = ev[2].payload();
    assert_eq!(
        (r["worker_id"].as_str(), r["epoch"].as_i64()),
        (Some(a.id.as_str()), Some(1))
    );
    assert!(ev.iter().all(|e| e.run_id.as_deref() == Some(run.as_str())));

    // GET /metrics needs no token and carries the metrics of API.md §3.
    let m = ctl.bare.get(ctl.url("/metrics")).send().await.unwrap();
    assert_eq!(m.status(), 200);
    let text = m.text().await.unwrap();
    for name in [
        "loopd_workers_online 2",
        "loopd_lease_expired_total 0",
        "loopd_step_retry_total 1",
        "loopd_steps_total{phase=\"implementation\",status=\"SUCCEEDED\"} 1",
        "loopd_runs{status=\"RUNNING\"} 1",
        "loopd_claim_wait_seconds_bucket",
        "loopd_claim_wait_seconds_count",
        "loopd_step_dispatch_seconds_bucket",
        "loopd_step_dispatch_seconds_count 2",
    ] {
        assert!(text.contains(name), "no `{name}` in /metrics:\n{text}");
    }

    // Log lines about the step's leases name the worker and the epoch; no token is logged.
    let log = ctl.proc.log_text();
    let about: Vec<&str> = log.lines().filter(|l| l.contains(&lease.step)).collect();
    for (msg, worker, epoch) in [
        ("lease granted", &a.id, 1),
        ("lease released", &a.id, 1),
        ("lease granted", &b.id, 2),
        ("step completed", &b.id, 2),
    ] {
        let found = about.iter().any(|l| {
            l.contains(msg)
                && l.contains(&format!("worker_id={worker}"))
                && l.contains(&format!("lease_epoch={epoch}"))
        });
        assert!(
            found,
            "no `{msg}` line with worker_id={worker} lease_epoch={epoch} in:\n{}",
            about.join("\n")
        );
    }
    for t in [a.token.as_str(), b.token.as_str(), CLIENT, JOIN] {
        assert!(!log.contains(t), "a token reached the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffered_heartbeat_is_stored_with_the_time_it_arrived() {
    // A long offline period: the controller's own first write of buffered beats comes a whole
    // period after its start, so until then only `GET /workers` writes them.
    let ctl = Ctl::start(
        "ctl-beat-age",
        &[
            ("LOOPD__LEASE__TTL_MS", "600000"),
            ("LOOPD__LEASE__WORKER_OFFLINE_AFTER_MS", "600000"),
        ],
    )
    .await;
    let w = ctl.worker("beat-age", &[]).await;
    assert_eq!(w.heartbeat("idle", &[]).await.0, 200);
    // An unchanged status: only noted in memory.
    let sent = chrono::Utc::now();
    assert_eq!(w.heartbeat("idle", &[]).await.0, 200);
    // The beat's age is what this is about: let three seconds pass.
    crate::support::wait_for("the beat to age", Duration::from_secs(10), || async {
        (chrono::Utc::now() - sent >= chrono::Duration::seconds(3)).then_some(())
    })
    .await;
    let (_, v) = answer(ctl.client.get(ctl.url("/workers"))).await;
    let asked = chrono::Utc::now();
    let heard = v["workers"]
        .as_array()
        .and_then(|ws| ws.iter().find(|x| x["id"] == w.id.as_str()))
        .and_then(|x| x["last_heartbeat_at"].as_str())
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .unwrap_or_else(|| panic!("the worker's heartbeat time in {v}"));
    let off = (heard.with_timezone(&chrono::Utc) - sent)
        .num_milliseconds()
        .abs();
    assert!(
        off < 1_000,
        "stored {heard}, sent at {sent}, asked at {asked}: the time it was written, not heard"
    );
}
