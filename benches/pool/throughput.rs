//! Throughput: 64 simulated workers claim and complete no-op steps of many long runs (each
//! completed implementation step queues a verification step and the other way round), counted
//! over two windows: a claim request then a completion request per cycle, then the completion
//! alone asking for the next step (`claim_next`, what `loopd --role worker` sends). Next to it
//! the database's own limit, measured here on the same database: single-row UPDATE
//! transactions per second from 64 connections, the CPU per cycle a given share of it would
//! allow on this machine's cores, and what the cycle's statements reach made inside the database
//! alone (`ceiling.rs`).

use crate::cluster::{endless, heartbeats, Cluster, SimWorker, Task};
use crate::footprint::{cpu_ticks, TICKS_PER_SEC};
use crate::{ceiling, statements};
use crate::{Opts, Table};
use diesel::prelude::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WORKERS: usize = 64;
/// Runs in flight: more than workers, so a worker always finds a queued step.
const RUNS: usize = 128;
const WARMUP: Duration = Duration::from_secs(5);

pub async fn run(o: &Opts, t: &mut Table) {
    println!(
        "throughput: {WORKERS} workers, {RUNS} runs, 2 × {} s",
        o.secs
    );
    let mut c = Cluster::start("throughput", &[]).await;
    for n in 0..RUNS {
        c.submit(&format!("t{n}"), endless()).await;
    }
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    // First window: claim, then complete (two requests per cycle, as older workers do).
    // Second: the completion asks for the next step (one request, as loopd workers do).
    let claim_next = Arc::new(AtomicBool::new(false));
    let mut tasks: Vec<Task> = Vec::new();
    for i in 0..WORKERS {
        let (http, base) = (c.http.clone(), c.base.clone());
        let (done, errors, claim_next) = (done.clone(), errors.clone(), claim_next.clone());
        tasks.push(Task(tokio::spawn(async move {
            let w = SimWorker::register(&http, &base, &format!("t{i}")).await;
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
                        // Distinct tails: the watchdog must not see a repeated task.
                        let tail = format!("worker {i} step {n} {}", l.step_id);
                        let then = claim_next.load(Ordering::Relaxed);
                        match w.complete_then(&l, true, &tail, then).await {
                            Ok(more) => {
                                next = more;
                                done.fetch_add(1, Ordering::Relaxed)
                            }
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
    let two = window(&c, &done, o.secs).await;
    claim_next.store(true, Ordering::Relaxed);
    tokio::time::sleep(WARMUP).await;
    let url = c.db.url.clone();
    let counted = tokio::task::spawn_blocking(move || statements::start(&url))
        .await
        .unwrap_or(false);
    let one = window(&c, &done, o.secs).await;
    let (url, cycles) = (c.db.url.clone(), one.cycles);
    let by_statement = if counted {
        tokio::task::spawn_blocking(move || statements::report(&url, cycles))
            .await
            .ok()
            .flatten()
    } else {
        None
    };
    drop(tasks);
    // The limit is measured alone, on the same database.
    c.ctl.kill9();
    let (url, secs) = (c.db.url.clone(), o.secs);
    let limit = tokio::task::spawn_blocking(move || pg_limit(&url, WORKERS, secs))
        .await
        .expect("pg limit");
    let url = c.db.url.clone();
    let alone = tokio::task::spawn_blocking(move || {
        ceiling::cycles_per_sec(&url, secs, &[1, ceiling::PER_COMMIT])
    })
    .await
    .expect("ceiling");
    let errors = errors.load(Ordering::Relaxed);
    t.add(
        "throughput, claim + complete (2 requests/cycle)",
        format!(
            "{:.0} /s ({:.1} % of the limit; controller CPU {:.0} % of a core; {})",
            two.rate,
            two.rate / limit * 100.0,
            two.cpu,
            two.per_cycle()
        ),
        "",
        None,
    );
    t.add(
        "throughput, complete + claim_next (1 request/cycle)",
        format!(
            "{:.0} /s ({errors} errors in both; controller CPU {:.0} % of a core; {})",
            one.rate,
            one.cpu,
            one.per_cycle()
        ),
        ">= 1000 /s",
        Some(one.rate >= 1000.0),
    );
    t.add(
        "postgres limit (1-row UPDATE tx/s, 64 conns)",
        format!("{limit:.0}"),
        "",
        None,
    );
    let ratio = one.rate / limit * 100.0;
    t.add(
        "throughput (1 request/cycle) / postgres limit",
        format!("{ratio:.1} %"),
        ">= 25 %",
        Some(ratio >= 25.0),
    );
    // Why the ratio is what it is: the machine's CPU per cycle that 25 % would allow (every
    // process here shares the same cores), beside what the controller and Postgres spend.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    t.add(
        "CPU per cycle allowed at 25 % of the limit",
        format!(
            "{:.2} ms of the machine's {cores:.0} cores (the controller alone spends {:.2} ms, \
             postgres {:.2} ms)",
            cores * 1000.0 / (0.25 * limit),
            one.ctl_ms,
            one.pg_ms
        ),
        "",
        None,
    );
    t.add(
        "the cycle's statements alone, made inside Postgres",
        format!(
            "{:.0} /s each its own transaction, {:.0} /s {n} to one, {:.0} /s {n} to a batch \
             statement as the controller sends them ({:.1}, {:.1} and {:.1} % of the limit; {} \
             sessions, no controller, HTTP or network)",
            alone[0],
            alone[1],
            alone[2],
            alone[0] / limit * 100.0,
            alone[1] / limit * 100.0,
            alone[2] / limit * 100.0,
            ceiling::SESSIONS,
            n = ceiling::PER_COMMIT,
        ),
        "",
        None,
    );
    if let Some(by) = by_statement {
        t.add("postgres time by statement (1 request/cycle)", by, "", None);
    }
}

/// One window's figures.
struct Window {
    /// Cycles per second, and in all.
    rate: f64,
    cycles: f64,
    /// The controller's CPU, % of a core.
    cpu: f64,
    /// CPU time per cycle (ms) of the controller and of the Postgres server's processes:
    /// steadier than the rate, which moves with whatever else the machine does.
    ctl_ms: f64,
    pg_ms: f64,
    /// The bench's own CPU per cycle (ms): its simulated workers share the machine.
    bench_ms: f64,
    /// Completions per statement that wrote queued completions together.
    per_batch: f64,
}

impl Window {
    fn per_cycle(&self) -> String {
        format!(
            "CPU per cycle: controller {:.2} ms, postgres {:.2} ms, this bench {:.2} ms; \
             {:.1} completions per batch",
            self.ctl_ms, self.pg_ms, self.bench_ms, self.per_batch
        )
    }
}

/// CPU ticks of every process named `postgres` on this machine (the bench's server when it
/// runs here; an empty map when it runs elsewhere).
fn postgres_ticks() -> HashMap<i32, u64> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .map(|pid| (pid, cpu_ticks(pid)))
        .collect()
}

/// The figures of a window of `secs` seconds.
async fn window(c: &Cluster, done: &AtomicU64, secs: u64) -> Window {
    let batches = || async {
        let b = c.metric("loopd_completion_batches_total").await;
        (b, c.metric("loopd_completion_batch_items_total").await)
    };
    let me = std::process::id() as i32;
    let (b0, i0) = batches().await;
    let (d0, t0, c0, p0, m0) = (
        done.load(Ordering::Relaxed),
        Instant::now(),
        cpu_ticks(c.pid()),
        postgres_ticks(),
        cpu_ticks(me),
    );
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let bench = (cpu_ticks(me) - m0) as f64 / TICKS_PER_SEC;
    let cycles = (done.load(Ordering::Relaxed) - d0).max(1) as f64;
    let elapsed = t0.elapsed().as_secs_f64();
    let ctl = (cpu_ticks(c.pid()) - c0) as f64 / TICKS_PER_SEC;
    // Processes that lived through the whole window (a backend that exits takes its count).
    let pg: u64 = (postgres_ticks().iter())
        .filter_map(|(pid, t)| Some(t.saturating_sub(*p0.get(pid)?)))
        .sum();
    let (b1, i1) = batches().await;
    Window {
        bench_ms: bench * 1000.0 / cycles,
        per_batch: (i1 - i0) / (b1 - b0).max(1.0),
        rate: cycles / elapsed,
        cycles,
        cpu: ctl / elapsed * 100.0,
        ctl_ms: ctl * 1000.0 / cycles,
        pg_ms: pg as f64 / TICKS_PER_SEC * 1000.0 / cycles,
    }
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
    crate::db_rate::per_second(url, conns, secs, |i, c| {
        diesel::sql_query(format!("UPDATE bench_limit SET n = n + 1 WHERE id = {i}"))
            .execute(c)
            .expect("update");
        1
    })
}
