//! Footprint: the controller's resident memory (VmRSS) and CPU time (utime + stime, as a
//! share of one core) while 1,000 registered simulated workers heartbeat at the interval the
//! controller gives them.

use crate::cluster::{Cluster, SimWorker, Task};
use crate::{Opts, Table};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WORKERS: usize = 1000;
/// Linux reports /proc/PID/stat times in USER_HZ ticks, 100 per second.
pub const TICKS_PER_SEC: f64 = 100.0;

/// utime + stime of `pid`, in ticks.
pub fn cpu_ticks(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at the last ')'.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): utime is field 14, stime field 15.
    let n = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    n(14) + n(15)
}

/// VmRSS of `pid` in MB.
pub fn rss_mb(pid: i32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

pub async fn run(o: &Opts, t: &mut Table) {
    println!(
        "footprint: {WORKERS} workers heartbeating, {} s",
        o.footprint_secs
    );
    let c = Cluster::start("footprint", &[]).await;
    let beats = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks: Vec<Task> = Vec::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(32));
    let joined = Arc::new(AtomicUsize::new(0));
    for i in 0..WORKERS {
        let (beats, errors, gate, joined) =
            (beats.clone(), errors.clone(), gate.clone(), joined.clone());
        let (http, base) = (c.http.clone(), c.base.clone());
        tasks.push(Task(tokio::spawn(async move {
            let w = {
                let _p = gate.acquire().await.expect("gate");
                SimWorker::register(&http, &base, &format!("f{i}")).await
            };
            joined.fetch_add(1, Ordering::SeqCst);
            let every = Duration::from_millis(w.heartbeat_ms);
            tokio::time::sleep(every.mul_f64(i as f64 / WORKERS as f64)).await;
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match w.heartbeat("idle", &[]).await {
                    Ok(_) => beats.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        })));
    }
    while joined.load(Ordering::SeqCst) < WORKERS {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Settle: every worker beats at least once before the window.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pid = c.pid();
    let (c0, b0, t0) = (
        cpu_ticks(pid),
        beats.load(Ordering::Relaxed),
        Instant::now(),
    );
    let mut rss_max: f64 = 0.0;
    while t0.elapsed() < Duration::from_secs(o.footprint_secs) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_max = rss_max.max(rss_mb(pid));
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (cpu_ticks(pid) - c0) as f64 / TICKS_PER_SEC / secs * 100.0;
    let rate = (beats.load(Ordering::Relaxed) - b0) as f64 / secs;
    drop(tasks);
    t.add(
        "controller RSS, 1000 workers (MB)",
        format!("{rss_max:.1}"),
        "<= 150",
        Some(rss_max <= 150.0),
    );
    t.add(
        "controller CPU, 1000 workers (% of a core)",
        format!(
            "{cpu:.1} ({rate:.0} heartbeats/s, {} errors)",
            errors.load(Ordering::Relaxed)
        ),
        "<= 25",
        Some(cpu <= 25.0),
    );
}
