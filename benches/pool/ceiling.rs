//! The database's own ceiling for the pool's cycle: the procedures of `ceiling.sql` make the
//! cycle the controller makes (a completion queuing the run's next step, leased at once to the
//! same worker, through `loopd_complete_and_claim` with the arguments the controller sends)
//! inside Postgres, from several sessions on their own runs, each cycle its own transaction.
//! What it reaches is what the cycle's statements cost the database alone: no controller, no
//! HTTP, no client protocol, no network.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Sessions making cycles at once: enough to keep every core busy through the commits' waits.
pub const SESSIONS: usize = 8;
/// Cycles per call of the procedure.
const BATCH: u64 = 20;

/// Cycles per second over `secs` seconds, in the database at `url` (which holds the bench's
/// runs: the seeded runs copy one of them, so prompts and run configs have its sizes).
pub fn cycles_per_sec(url: &str, secs: u64) -> f64 {
    let mut c = PgConnection::establish(url).expect("connect for the ceiling");
    c.batch_execute(include_str!("ceiling.sql"))
        .expect("install the ceiling's procedures");
    for i in 0..SESSIONS {
        c.batch_execute(&format!(
            "CALL bench_ceiling_seed('ceiling-{i}', 'ceiling-w{i}')"
        ))
        .expect("seed a run for the ceiling");
    }
    let phases = (loopd::domain::StepPhase::ALL.iter())
        .map(|p| format!("'{}'", p.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..SESSIONS)
        .map(|i| {
            let (url, stop, count) = (url.to_string(), stop.clone(), count.clone());
            // Simple protocol: a procedure that commits must not run in a transaction block.
            let call = format!(
                "CALL bench_ceiling_cycles('ceiling-{i}', 'ceiling-w{i}', {BATCH}, \
                 ARRAY[{phases}])"
            );
            std::thread::spawn(move || {
                let mut c = PgConnection::establish(&url).expect("connect");
                while !stop.load(Ordering::Relaxed) {
                    c.batch_execute(&call).expect("ceiling cycles");
                    count.fetch_add(BATCH, Ordering::Relaxed);
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
