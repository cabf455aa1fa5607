//! What a database sustains: `conns` threads, each on its own connection, repeat some work for
//! `secs` seconds after a second's warm-up, and the total is counted.

use diesel::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Units of work per second: `work(i, conn)` is called again and again on thread `i`'s own
/// connection to `url`, and returns how many units it did.
pub fn per_second<F>(url: &str, conns: usize, secs: u64, work: F) -> f64
where
    F: Fn(usize, &mut PgConnection) -> u64 + Send + Sync + 'static,
{
    let work = Arc::new(work);
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..conns)
        .map(|i| {
            let (url, stop, count, work) =
                (url.to_string(), stop.clone(), count.clone(), work.clone());
            std::thread::spawn(move || {
                let mut c = PgConnection::establish(&url).expect("connect");
                while !stop.load(Ordering::Relaxed) {
                    count.fetch_add(work(i, &mut c), Ordering::Relaxed);
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
