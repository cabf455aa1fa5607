//! Fan-out: 1,000 SSE readers tail `/runs/{id}/output` of one run while a simulated worker
//! posts output lines to it at the pace of the worker's streamer (a post every 100 ms, when
//! the agent keeps printing), from a thread and runtime of their own, so that the readers'
//! work in this process delays them as little as possible. Measures the posts' latency
//! (p50/p99) and the controller's resident memory (VmRSS) growth from before the readers
//! connect to after the last post, and checks that every reader got every line.

use crate::cluster::{endless, percentile, Cluster, Lease, SimWorker, Task};
use crate::footprint::{cpu_ticks, rss_mb, TICKS_PER_SEC};
use crate::{Opts, Table};
use futures_util::StreamExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The worker streamer's poll interval: it posts at most this often.
const PACE: Duration = Duration::from_millis(100);

/// One reader: counts the lines it receives in `got`.
async fn reader(http: reqwest::Client, url: String, open: Arc<AtomicUsize>, got: Arc<AtomicUsize>) {
    let Ok(resp) = http.get(&url).send().await else {
        return;
    };
    if !resp.status().is_success() {
        eprintln!("reader refused: {}", resp.status());
        return;
    }
    open.fetch_add(1, Ordering::SeqCst);
    let mut body = resp.bytes_stream();
    let mut lines = 0usize;
    while let Some(Ok(b)) = body.next().await {
        // Each posted line ends in "\n" inside the JSON string: count the escapes.
        lines += b.windows(2).filter(|w| w == b"\\n").count();
        got.store(lines, Ordering::Relaxed);
    }
}

/// Posts `posts` lines at the streamer's pace on a runtime of its own; their latencies (ms)
/// and the failed posts.
fn post_all(w: SimWorker, lease: Lease, posts: usize) -> (Vec<f64>, usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let w = w.with_client(reqwest::Client::new());
        let (mut offset, mut lat, mut errors) = (0u64, Vec::with_capacity(posts), 0usize);
        let mut pace = tokio::time::interval(PACE);
        for i in 0..posts {
            pace.tick().await;
            let line = format!("fanout line {i:06} ........................................\n");
            let len = line.len() as u64;
            let t0 = Instant::now();
            match w.output(&lease, offset, line).await {
                Ok(next) => offset = next.max(offset + len),
                Err(e) => {
                    eprintln!("post {i}: {e}");
                    errors += 1;
                }
            }
            lat.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
        (lat, errors)
    })
}

pub async fn run(o: &Opts, t: &mut Table) {
    let (posts, readers) = (o.fanout_posts, o.fanout_readers);
    println!("fanout: {readers} readers of one run's output, {posts} posts");
    let c = Cluster::start(
        "fanout",
        &[
            ("LOOPD__LIMITS__OUTPUT_STREAMS_PER_RUN", "5000"),
            ("LOOPD__LIMITS__OUTPUT_STREAMS_PER_CLIENT", "5000"),
        ],
    )
    .await;
    let w = SimWorker::register(&c.http, &c.base, "fanout").await;
    let run = c.submit("fanout", endless()).await;
    let lease: Lease = loop {
        if let Ok(Some(l)) = w.claim(30_000).await {
            break l;
        }
    };
    let (hw, hl) = (w.clone(), lease.clone());
    let _beat = Task(tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(hw.heartbeat_ms)).await;
            let _ = hw.heartbeat("busy", std::slice::from_ref(&hl)).await;
        }
    }));
    let pid = c.pid();
    let rss0 = rss_mb(pid);

    let readers_http = reqwest::Client::new();
    let url = format!("{}/runs/{run}/output", c.base);
    let open = Arc::new(AtomicUsize::new(0));
    let counts: Vec<Arc<AtomicUsize>> = (0..readers).map(|_| Arc::default()).collect();
    let mut tasks = Vec::new();
    for got in &counts {
        let (http, url, open, got) = (readers_http.clone(), url.clone(), open.clone(), got.clone());
        tasks.push(Task(tokio::spawn(reader(http, url, open, got))));
        // Connect in small bursts, not all at once.
        if tasks.len() % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let all_open = crate::cluster::poll(Duration::from_secs(60), || async {
        (open.load(Ordering::SeqCst) >= readers).then_some(())
    })
    .await;
    let rss_open = rss_mb(pid);

    let cpu0 = cpu_ticks(pid);
    let (poster, plan) = (w.clone(), lease.clone());
    let thread = std::thread::spawn(move || post_all(poster, plan, posts));
    let (mut lat, errors) = tokio::task::spawn_blocking(move || thread.join())
        .await
        .expect("join")
        .expect("poster thread");
    let delivered = crate::cluster::poll(Duration::from_secs(120), || async {
        counts
            .iter()
            .all(|g| g.load(Ordering::Relaxed) >= posts)
            .then_some(())
    })
    .await;
    // The controller's CPU time for the posts and their fan-out (steadier than latency on a
    // busy machine).
    let cpu_ms = (cpu_ticks(pid) - cpu0) as f64 / TICKS_PER_SEC * 1000.0 / posts.max(1) as f64;
    let complete = counts
        .iter()
        .filter(|g| g.load(Ordering::Relaxed) >= posts)
        .count();
    let rss1 = rss_mb(pid);
    drop(tasks);
    let _ = w.complete(&lease, true, "fanout").await;
    let (p50, p99) = (percentile(&mut lat, 50.0), percentile(&mut lat, 99.0));
    t.add(
        &format!("fan-out: output POST p50 / p99, {readers} readers (ms)"),
        format!("{p50:.2} / {p99:.2} ({posts} posts, {errors} errors)"),
        "p99 <= 10",
        Some(p99 <= 10.0 && errors == 0),
    );
    t.add(
        &format!("fan-out: controller CPU per post, {readers} readers (ms)"),
        format!("{cpu_ms:.2}"),
        "",
        None,
    );
    let growth = rss1 - rss0;
    t.add(
        &format!("fan-out: controller RSS growth, {readers} readers (MB)"),
        format!("{growth:.1} ({rss0:.1} → {rss_open:.1} open → {rss1:.1} after posts)"),
        "<= 50",
        Some(growth <= 50.0),
    );
    t.add(
        "fan-out: readers that got every line",
        format!(
            "{complete} / {readers} (all connected: {})",
            all_open.is_some()
        ),
        "all",
        Some(complete == readers && delivered.is_some()),
    );
}
