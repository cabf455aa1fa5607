//! Two controllers on one database (docs/controllers.md): dispatch across them (16 idle
//! simulated workers long-poll on the second; runs are submitted through the first, whose
//! starter queues their steps, so each wake-up crosses from one controller to the other
//! through Postgres), the completion cycles per second of two controllers against one (the
//! same 32 workers, split between the two or all on one), and the time the second takes to
//! take over the duties once the first, which holds them, is killed with SIGKILL.

use crate::cluster::{endless, heartbeats, percentile, poll, Cluster, SimWorker, Task};
use crate::{Opts, Table};
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use serde_json::json;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WORKERS: usize = 16;
const CYCLE_WORKERS: usize = 32;
const RUNS: usize = 96;
/// What the holder of the duties logs once it took them.
const TAKEN: &str = "controller duties taken";

pub async fn run(o: &Opts, t: &mut Table) {
    let samples = o.samples.min(200);
    println!("controllers: {samples} dispatch samples across two controllers, {WORKERS} workers");
    let c = Cluster::start("controllers", &[]).await;
    poll(Duration::from_secs(30), || async {
        c.ctl.log_text().contains(TAKEN).then_some(())
    })
    .await
    .expect("the first controller takes the duties");
    let second = c.ctl.sibling(&c.dir.path().join("second"));
    second.wait_ready("/ready").await;
    let other = second.url();

    // Dispatch: submitted through the first, claimed through the second.
    let polling = Arc::new(AtomicUsize::new(0));
    let mut tasks: Vec<Task> = Vec::new();
    for i in 0..WORKERS {
        let (http, base, polling) = (c.http.clone(), other.clone(), polling.clone());
        tasks.push(Task(tokio::spawn(async move {
            let w = SimWorker::register(&http, &base, &format!("x{i}")).await;
            let _beat = heartbeats(w.clone());
            polling.fetch_add(1, Ordering::SeqCst);
            loop {
                match w.claim(30_000).await {
                    Ok(Some(l)) => {
                        let _ = w.complete(&l, false, "bench").await;
                    }
                    Ok(None) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        })));
    }
    while polling.load(Ordering::SeqCst) < WORKERS {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in 0..samples {
        let id = c
            .submit(
                &format!("x{n}"),
                json!({"reviewer": false, "iterations": 1}),
            )
            .await;
        let done = poll(Duration::from_secs(15), || async {
            let steps = c.steps(&id).await;
            steps
                .iter()
                .any(|s| s["status"] != "QUEUED" && s["status"] != "PENDING")
                .then_some(())
        })
        .await;
        if done.is_none() {
            eprintln!("controllers: run {id} not dispatched in 15 s");
        }
    }
    drop(tasks);
    let url = c.db.url.clone();
    let mut queued = tokio::task::spawn_blocking(move || queued_to_leased(&url))
        .await
        .expect("queued → leased");
    let (p50, p99) = (percentile(&mut queued, 50.0), percentile(&mut queued, 99.0));
    t.add(
        "two controllers: dispatch across, p50 / p99 (ms)",
        format!("{p50:.1} / {p99:.1} ({} steps)", queued.len()),
        "p99 <= 25",
        Some(p99 <= 25.0),
    );

    // Cycles per second: all workers on the first, then split between the two.
    for n in 0..RUNS {
        c.submit(&format!("c{n}"), endless()).await;
    }
    let one = cycles(&c, std::slice::from_ref(&c.base), o.secs.min(15)).await;
    let two = cycles(&c, &[c.base.clone(), other.clone()], o.secs.min(15)).await;
    t.add(
        "completion cycles/s, one controller → two on one database",
        format!(
            "{one:.0} → {two:.0} /s ({CYCLE_WORKERS} workers, {} cores)",
            cores()
        ),
        "",
        None,
    );

    // Take-over: kill the holder (the first, unless it lost its session meanwhile).
    let mut c = c;
    let before = second.log_text().matches(TAKEN).count();
    let killed = Instant::now();
    c.ctl.kill9();
    let taken = poll(Duration::from_secs(30), || async {
        (second.log_text().matches(TAKEN).count() > before).then(Instant::now)
    })
    .await;
    let ms = taken.map(|at| (at - killed).as_secs_f64() * 1000.0);
    t.add(
        "two controllers: duties taken over after SIGKILL of the holder (ms)",
        ms.map_or("not within 30 s".into(), |ms| format!("{ms:.0}")),
        "<= 5000",
        Some(ms.is_some_and(|ms| ms <= 5000.0)),
    );
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

/// Completion cycles per second over `secs` (after a warm-up), `CYCLE_WORKERS` workers spread
/// over the controllers `bases`, each completing with `claim_next`.
async fn cycles(c: &Cluster, bases: &[String], secs: u64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks: Vec<Task> = Vec::new();
    for i in 0..CYCLE_WORKERS {
        let (http, base, done) = (c.http.clone(), bases[i % bases.len()].clone(), done.clone());
        tasks.push(Task(tokio::spawn(async move {
            let w = SimWorker::register(&http, &base, &format!("c{i}")).await;
            let _beat = heartbeats(w.clone());
            let (mut n, mut next) = (0u64, None);
            loop {
                let got = match next.take() {
                    Some(l) => Ok(Some(l)),
                    None => w.claim(30_000).await,
                };
                match got {
                    Ok(Some(l)) => {
                        n += 1;
                        let tail = format!("worker {i} step {n} {}", l.step_id);
                        if let Ok(more) = w.complete_then(&l, true, &tail, true).await {
                            next = more;
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(None) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        })));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (start, at) = (done.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let rate = (done.load(Ordering::Relaxed) - start) as f64 / at.elapsed().as_secs_f64();
    drop(tasks);
    // Let the dropped workers' leases go before the next window (their steps are retried).
    tokio::time::sleep(Duration::from_secs(1)).await;
    rate
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
