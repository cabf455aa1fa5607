//! Throughput: 64 simulated workers claim and complete no-op steps of many long runs (each
//! completed implementation step queues a verification step and the other way round), counted
//! over a window; next to it the database's own limit, measured here on the same database:
//! single-row UPDATE transactions per second from 64 connections.

use crate::cluster::{endless, heartbeats, Cluster, SimWorker, Task};
use crate::footprint::{cpu_ticks, TICKS_PER_SEC};
use crate::{Opts, Table};
use diesel::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WORKERS: usize = 64;
/// Runs in flight: more than workers, so a worker always finds a queued step.
const RUNS: usize = 128;
const WARMUP: Duration = Duration::from_secs(5);

pub async fn run(o: &Opts, t: &mut Table) {
    println!("throughput: {WORKERS} workers, {RUNS} runs, {} s", o.secs);
    let mut c = Cluster::start("throughput", &[]).await;
    for n in 0..RUNS {
        c.submit(&format!("t{n}"), endless()).await;
    }
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks: Vec<Task> = Vec::new();
    for i in 0..WORKERS {
        let (http, base) = (c.http.clone(), c.base.clone());
        let (done, errors) = (done.clone(), errors.clone());
        tasks.push(Task(tokio::spawn(async move {
            let w = SimWorker::register(&http, &base, &format!("t{i}")).await;
            let _beat = heartbeats(w.clone());
            let mut n = 0u64;
            loop {
                match w.claim(30_000).await {
                    Ok(Some(l)) => {
                        n += 1;
                        // Distinct tails: the watchdog must not see a repeated task.
                        let tail = format!("worker {i} step {n} {}", l.step_id);
                        match w.complete(&l, true, &tail).await {
                            Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                            Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                    Ok(None) => {}
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        })));
    }
    tokio::time::sleep(WARMUP).await;
    let (d0, t0, c0) = (
        done.load(Ordering::Relaxed),
        Instant::now(),
        cpu_ticks(c.pid()),
    );
    tokio::time::sleep(Duration::from_secs(o.secs)).await;
    let cycles = done.load(Ordering::Relaxed) - d0;
    let secs = t0.elapsed().as_secs_f64();
    let rate = cycles as f64 / secs;
    let cpu = (cpu_ticks(c.pid()) - c0) as f64 / TICKS_PER_SEC / secs * 100.0;
    drop(tasks);
    // The limit is measured alone, on the same database.
    c.ctl.kill9();
    let (url, secs) = (c.db.url.clone(), o.secs);
    let limit = tokio::task::spawn_blocking(move || pg_limit(&url, WORKERS, secs))
        .await
        .expect("pg limit");
    let ratio = rate / limit * 100.0;
    t.add(
        "throughput (claim+complete/s, 64 workers)",
        format!(
            "{rate:.0} ({} errors; controller CPU {cpu:.0} % of a core)",
            errors.load(Ordering::Relaxed)
        ),
        "",
        None,
    );
    t.add(
        "postgres limit (1-row UPDATE tx/s, 64 conns)",
        format!("{limit:.0}"),
        "",
        None,
    );
    t.add(
        "throughput / postgres limit",
        format!("{ratio:.1} %"),
        ">= 25 %",
        Some(ratio >= 25.0),
    );
}

/// Single-row UPDATE transactions per second from `conns` connections, each on its own row,
/// for `secs` seconds.
fn pg_limit(url: &str, conns: usize, secs: u64) -> f64 {
    let mut c = PgConnection::establish(url).expect("connect for the limit");
    diesel::sql_query("CREATE TABLE bench_limit (id int PRIMARY KEY, n bigint NOT NULL)")
        .execute(&mut c)
        .expect("create bench_limit");
    diesel::sql_query(format!(
        "INSERT INTO bench_limit SELECT g, 0 FROM generate_series(0, {conns}) g"
    ))
    .execute(&mut c)
    .expect("fill bench_limit");
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..conns)
        .map(|i| {
            let (url, stop, count) = (url.to_string(), stop.clone(), count.clone());
            std::thread::spawn(move || {
                let mut c = PgConnection::establish(&url).expect("connect");
                let q = format!("UPDATE bench_limit SET n = n + 1 WHERE id = {i}");
                while !stop.load(Ordering::Relaxed) {
                    diesel::sql_query(&q).execute(&mut c).expect("update");
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let (n0, t0) = (count.load(Ordering::Relaxed), Instant::now());
    std::thread::sleep(Duration::from_secs(secs));
    let n = count.load(Ordering::Relaxed) - n0;
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for th in threads {
        let _ = th.join();
    }
    rate
}
