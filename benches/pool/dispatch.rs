//! Dispatch latency: 16 idle simulated workers long-poll; runs are submitted one at a time, and
//! a worker that gets a run's step fails it, which ends the run. Two figures per run: "step
//! queued → leased" itself, from the step's own queue and lease times (the controller's and the
//! database's clocks: the same machine's here), and, as an upper bound, the time from the
//! submit response to the claim response reaching a worker (it also holds starting the run,
//! reading its spec and plan from git, and queueing its first step).

use crate::cluster::{heartbeats, percentile, Cluster, SimWorker, Task};
use crate::{Opts, Table};
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const WORKERS: usize = 16;

pub async fn run(o: &Opts, t: &mut Table) {
    println!("dispatch: {} samples, {WORKERS} idle workers", o.samples);
    let c = Cluster::start("dispatch", &[]).await;
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Instant)>();
    let polling = Arc::new(AtomicUsize::new(0));
    let mut tasks: Vec<Task> = Vec::new();
    for i in 0..WORKERS {
        let (http, base, tx, polling) =
            (c.http.clone(), c.base.clone(), tx.clone(), polling.clone());
        tasks.push(Task(tokio::spawn(async move {
            let w = SimWorker::register(&http, &base, &format!("d{i}")).await;
            let _beat = heartbeats(w.clone());
            polling.fetch_add(1, Ordering::SeqCst);
            loop {
                match w.claim(30_000).await {
                    Ok(Some(l)) => {
                        let _ = tx.send((l.run_id.clone(), Instant::now()));
                        if let Err(e) = w.complete(&l, false, "bench").await {
                            eprintln!("dispatch: {e}");
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        eprintln!("dispatch: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        })));
    }
    while polling.load(Ordering::SeqCst) < WORKERS {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Let every worker's first long poll reach the controller.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut lat = Vec::with_capacity(o.samples);
    let mut lost = 0;
    for n in 0..o.samples {
        let id = c
            .submit(
                &format!("d{n}"),
                json!({"reviewer": false, "iterations": 1}),
            )
            .await;
        let answered = Instant::now();
        let got = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some((run, at)) = rx.recv().await {
                if run == id {
                    return Some(at);
                }
            }
            None
        })
        .await;
        match got {
            Ok(Some(at)) => lat.push(at.saturating_duration_since(answered).as_secs_f64() * 1000.0),
            _ => lost += 1,
        }
    }
    drop(tasks);
    let url = c.db.url.clone();
    let mut queued = tokio::task::spawn_blocking(move || queued_to_leased(&url))
        .await
        .expect("queued → leased");
    let (p50, p99) = (percentile(&mut queued, 50.0), percentile(&mut queued, 99.0));
    let max = queued.last().copied().unwrap_or(f64::NAN);
    t.add("dispatch p50 (ms)", format!("{p50:.1}"), "", None);
    t.add(
        "dispatch p99 (ms)",
        format!(
            "{p99:.1} (max {max:.1}, {} steps, {lost} not dispatched in 10 s)",
            queued.len()
        ),
        "<= 25",
        Some(p99 <= 25.0 && lost == 0),
    );
    let (p50, p99) = (percentile(&mut lat, 50.0), percentile(&mut lat, 99.0));
    let max = lat.last().copied().unwrap_or(f64::NAN);
    t.add(
        "submit answered → claim answered p50 / p99 (ms)",
        format!("{p50:.1} / {p99:.1} (max {max:.1})"),
        "",
        None,
    );
}

#[derive(QueryableByName)]
struct Waited {
    #[diesel(sql_type = BigInt)]
    ms: i64,
}

/// Each leased step's time from queued to leased, in ms, ascending.
fn queued_to_leased(url: &str) -> Vec<f64> {
    let mut c = PgConnection::establish(url).expect("connect");
    let rows: Vec<Waited> = diesel::sql_query(
        "SELECT started_at - queued_at AS ms FROM steps WHERE started_at IS NOT NULL ORDER BY 1",
    )
    .load(&mut c)
    .expect("steps");
    rows.into_iter().map(|r| r.ms as f64).collect()
}
