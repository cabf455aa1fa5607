//! Pool benchmark: a real `loopd --role controller` on a fresh Postgres database, driven
//! through its HTTP API by simulated workers (and, for recovery, real worker processes).
//! Prints one table: dispatch latency (also across two controllers), throughput against the
//! database's own limit (and of two controllers against one), the take-over of the duties,
//! recovery time and lease losses under heartbeat load, controller footprint, live-output
//! streaming and its fan-out to 1,000 readers.
//!
//!   cargo bench --bench pool                         # every section
//!   cargo bench --bench pool -- dispatch throughput  # some sections
//!
//! Sections: dispatch controllers throughput recovery soak footprint streaming fanout.
//! Settings (env):
//! LOOPD_BENCH_PG (admin URL of the Postgres server, default 127.0.0.1:5432),
//! LOOPD_BENCH_SAMPLES (dispatch samples, 500), LOOPD_BENCH_SECS (each throughput window, 20),
//! LOOPD_BENCH_SOAK_SECS (60; 600 is the ten minutes), LOOPD_BENCH_FOOTPRINT_SECS (30),
//! LOOPD_BENCH_STREAM_MB (50), LOOPD_BENCH_FANOUT_POSTS (300),
//! LOOPD_BENCH_FANOUT_READERS (1000), LOOPD_BENCH_CONTROLLER_ENV
//! (extra controller settings for experiments, e.g. "LOOPD__STORAGE__POOL_SIZE=32"). On a
//! server that counts nested statements (`pg_stat_statements` loaded,
//! `pg_stat_statements.track = all`), the throughput section also prints Postgres' time by statement in the one-request window (`statements.rs`).

#[path = "../../tests/support/mod.rs"]
mod support;

mod ceiling;
mod cluster;
mod controllers;
mod db_rate;
mod dispatch;
mod fanout;
mod footprint;
mod recovery;
mod statements;
mod streaming;
mod throughput;

/// The bench's settings.
pub struct Opts {
    pub samples: usize,
    pub secs: u64,
    pub soak_secs: u64,
    pub footprint_secs: u64,
    pub stream_mb: usize,
    pub fanout_posts: usize,
    pub fanout_readers: usize,
}

fn env_num<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One line of the result table.
pub struct Row {
    pub metric: String,
    pub value: String,
    pub target: String,
    /// None: informational.
    pub ok: Option<bool>,
}

#[derive(Default)]
pub struct Table(pub Vec<Row>);

impl Table {
    pub fn add(&mut self, metric: &str, value: String, target: &str, ok: Option<bool>) {
        println!("  {metric}: {value}");
        self.0.push(Row {
            metric: metric.into(),
            value,
            target: target.into(),
            ok,
        });
    }

    fn print(&self) {
        let w = self.0.iter().map(|r| r.metric.len()).max().unwrap_or(0);
        let v = self.0.iter().map(|r| r.value.len()).max().unwrap_or(0);
        println!("\n| {:w$} | {:v$} | target | ok |", "metric", "value");
        println!(
            "|{}|{}|--------|----|",
            "-".repeat(w + 2),
            "-".repeat(v + 2)
        );
        for r in &self.0 {
            let ok = match r.ok {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "",
            };
            println!("| {:w$} | {:v$} | {} | {ok} |", r.metric, r.value, r.target);
        }
    }
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

const SECTIONS: &[&str] = &[
    "dispatch",
    "controllers",
    "throughput",
    "recovery",
    "soak",
    "footprint",
    "streaming",
    "fanout",
];

#[tokio::main]
async fn main() {
    if let Ok(pg) = std::env::var("LOOPD_BENCH_PG") {
        // The test support reads the server's admin URL from here.
        std::env::set_var("LOOPD_TEST_PG", pg);
    }
    let o = Opts {
        samples: env_num("LOOPD_BENCH_SAMPLES", 500),
        secs: env_num("LOOPD_BENCH_SECS", 20),
        soak_secs: env_num("LOOPD_BENCH_SOAK_SECS", 60),
        footprint_secs: env_num("LOOPD_BENCH_FOOTPRINT_SECS", 30),
        stream_mb: env_num("LOOPD_BENCH_STREAM_MB", 50),
        fanout_posts: env_num("LOOPD_BENCH_FANOUT_POSTS", 300),
        fanout_readers: env_num("LOOPD_BENCH_FANOUT_READERS", 1000),
    };
    // cargo passes `--bench`; every other word names a section.
    let asked: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if let Some(bad) = asked.iter().find(|a| !SECTIONS.contains(&a.as_str())) {
        eprintln!("unknown section {bad}; sections: {}", SECTIONS.join(" "));
        std::process::exit(2);
    }
    let on = |s: &str| asked.is_empty() || asked.iter().any(|a| a == s);
    let mut t = Table::default();
    let load_before = loadavg();
    if on("dispatch") {
        dispatch::run(&o, &mut t).await;
    }
    if on("controllers") {
        controllers::run(&o, &mut t).await;
    }
    if on("throughput") {
        throughput::run(&o, &mut t).await;
    }
    if on("recovery") {
        recovery::recovery(&mut t).await;
    }
    if on("soak") {
        recovery::soak(&o, &mut t).await;
    }
    if on("footprint") {
        footprint::run(&o, &mut t).await;
    }
    if on("streaming") {
        streaming::run(&o, &mut t).await;
    }
    if on("fanout") {
        fanout::run(&o, &mut t).await;
    }
    t.print();
    println!(
        "load average before: {load_before}; after: {} ({} cores)",
        loadavg(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
}
