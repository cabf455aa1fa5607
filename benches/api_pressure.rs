//! API pressure benchmark (issue 32): a real `loopd --role controller` on a fresh Postgres
//! database, 16 real `loopd --role worker` processes, and 32 shared_fs runs of three agent
//! steps each, whose agent is the stub calling the stand-in provider
//! (`tests/support/provider.rs`). The provider admits 4 concurrent calls (429 beyond) and
//! answers 529 to every call for 30 seconds once half the agent steps are done. Three
//! scenarios: with the pool's pressure control (the default settings), the same with
//! `[api_limits] max_concurrent` set to what the provider admits (an operator who knows the
//! account's limit), and with it turned off (`[api_limits] enabled = false`). For each: how
//! many runs completed and failed, how many calls the provider took, admitted and refused,
//! and how long it all took.
//!
//!   cargo bench --bench api_pressure                 # every scenario
//!   cargo bench --bench api_pressure -- with         # some: with | tuned | without
//!
//! Settings (env): LOOPD_BENCH_PG (admin URL of the Postgres server, default 127.0.0.1:5432),
//! LOOPD_BENCH_RUNS (32), LOOPD_BENCH_WORKERS (16), LOOPD_BENCH_ADMIT (4),
//! LOOPD_BENCH_CALL_MS (each admitted call, 2000), LOOPD_BENCH_WALL_SECS (30),
//! LOOPD_BENCH_DEADLINE_SECS (each scenario at most, 900), LOOPD_BENCH_OFF_ENV (the setting
//! that turns pressure control off, default "LOOPD__API_LIMITS__ENABLED=false"),
//! LOOPD_BENCH_CONTROLLER_ENV (more controller settings for experiments, "KEY=VALUE …").

#[path = "../tests/support/mod.rs"]
mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::pg::TestDb;
use support::proc::Loopd;
use support::provider::{Counts, Provider};
use support::repo::Repo;
use support::test_dir;

const JOIN: &str = "bench-join-token-0001";
/// Open boxes of each run's plan: two tasks, then the step that finds none left.
const TASKS: usize = 2;
const AGENT_STEPS: usize = TASKS + 1;

fn env_num<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pairs(v: &str) -> Vec<(String, String)> {
    v.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

struct Opts {
    runs: usize,
    workers: usize,
    admit: usize,
    call: Duration,
    wall: Duration,
    deadline: Duration,
    off_env: Vec<(String, String)>,
    controller_env: Vec<(String, String)>,
}

/// What one scenario measured.
struct Figures {
    name: &'static str,
    completed: usize,
    failed: usize,
    unfinished: usize,
    reasons: Vec<String>,
    counts: Counts,
    secs: f64,
}

impl Figures {
    fn rejected_pct(&self) -> f64 {
        if self.counts.calls == 0 {
            return 0.0;
        }
        100.0 * self.counts.rejected() as f64 / self.counts.calls as f64
    }
}

#[tokio::main]
async fn main() {
    if let Ok(pg) = std::env::var("LOOPD_BENCH_PG") {
        // The test support reads the server's admin URL from here.
        std::env::set_var("LOOPD_TEST_PG", pg);
    }
    let o = Opts {
        runs: env_num("LOOPD_BENCH_RUNS", 32),
        workers: env_num("LOOPD_BENCH_WORKERS", 16),
        admit: env_num("LOOPD_BENCH_ADMIT", 4),
        call: Duration::from_millis(env_num("LOOPD_BENCH_CALL_MS", 2000)),
        wall: Duration::from_secs(env_num("LOOPD_BENCH_WALL_SECS", 30)),
        deadline: Duration::from_secs(env_num("LOOPD_BENCH_DEADLINE_SECS", 900)),
        off_env: pairs(
            &std::env::var("LOOPD_BENCH_OFF_ENV")
                .unwrap_or_else(|_| "LOOPD__API_LIMITS__ENABLED=false".into()),
        ),
        controller_env: pairs(&std::env::var("LOOPD_BENCH_CONTROLLER_ENV").unwrap_or_default()),
    };
    // `cargo bench` passes `--bench`; anything else names scenarios.
    let asked: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wants = |s: &str| asked.is_empty() || asked.iter().any(|a| a == s);
    println!(
        "api pressure: {} runs of {AGENT_STEPS} agent steps, {} workers; the provider admits {} \
         calls at once, each {} ms, and answers 529 for {} s from half-way",
        o.runs,
        o.workers,
        o.admit,
        o.call.as_millis(),
        o.wall.as_secs()
    );
    let mut all = Vec::new();
    if wants("with") {
        all.push(scenario(&o, "with pressure control", &[]).await);
    }
    if wants("tuned") {
        let max = vec![(
            "LOOPD__API_LIMITS__MAX_CONCURRENT".to_string(),
            o.admit.to_string(),
        )];
        all.push(scenario(&o, "with, max_concurrent = admitted", &max).await);
    }
    if wants("without") {
        all.push(scenario(&o, "without (setting off)", &o.off_env).await);
    }
    println!(
        "\n| scenario | runs completed | runs failed | calls | admitted | 429 | 529 | rejected | peak | time |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for f in &all {
        let c = &f.counts;
        println!(
            "| {} | {} of {} | {}{} | {} | {} | {} | {} | {:.1} % | {} | {:.0} s |",
            f.name,
            f.completed,
            o.runs,
            f.failed,
            if f.unfinished > 0 {
                format!(" ({} unfinished)", f.unfinished)
            } else {
                String::new()
            },
            c.calls,
            c.accepted,
            c.rate_limited,
            c.overloaded,
            f.rejected_pct(),
            c.peak,
            f.secs
        );
    }
    for f in &all {
        for r in &f.reasons {
            println!("{}: failed: {r}", f.name);
        }
    }
    if let Some(f) = all.iter().find(|f| f.name.starts_with("with ")) {
        let ok = f.completed == o.runs && f.rejected_pct() <= 10.0;
        println!(
            "\ntarget (with pressure control): every run completes and ≤ 10 % of calls refused: {}",
            if ok { "met" } else { "NOT met" }
        );
    }
}

/// One pool against a fresh provider; `extra` adds controller settings.
async fn scenario(o: &Opts, name: &'static str, extra: &[(String, String)]) -> Figures {
    println!("\n{name}:");
    let dir = test_dir("bench-api-pressure");
    let db = TestDb::create();
    let provider = Provider::start(o.admit, o.call, 0.01).await;
    let mut env: Vec<(String, String)> = [
        ("LOOPD__STORAGE__TYPE", "postgres"),
        ("LOOPD__STORAGE__URL", db.url.as_str()),
        ("LOOPD_WORKER_JOIN_TOKEN", JOIN),
        ("LOOPD__SCHEDULER__MAX_CONCURRENT_RUNS", "100000"),
        ("LOOPD__SCHEDULER__MAX_RUNS_PER_WORKSPACE", "100000"),
        ("LOOPD__LIMITS__REGISTRATIONS_PER_MINUTE", "0"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.extend(o.controller_env.iter().cloned());
    env.extend(extra.iter().cloned());
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let ctl = Loopd::spawn(
        &dir.path().join("controller"),
        &["--role", "controller"],
        &env_refs,
    );
    ctl.wait_ready("/ready").await;
    let base = ctl.url();
    let mut workers = Vec::new();
    for i in 0..o.workers {
        workers.push(Loopd::spawn(
            &dir.path().join(format!("worker{i}")),
            &["--role", "worker", "--controller", &base],
            &[("LOOPD_WORKER_JOIN_TOKEN", JOIN)],
        ));
    }
    let http = reqwest::Client::new();
    let online = wait(Duration::from_secs(120), || async {
        let v: Value = http
            .get(format!("{base}/workers"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let n = v["workers"]
            .as_array()?
            .iter()
            .filter(|w| w["status"] == "idle" || w["status"] == "busy")
            .count();
        (n >= o.workers).then_some(n)
    })
    .await;
    println!("  {} workers online", online.unwrap_or(0));

    let mode = format!("provider {}", provider.url());
    let repos: Vec<Repo> = (0..o.runs)
        .map(|i| {
            Repo::create(
                dir.path(),
                &format!("ws{i:02}"),
                TASKS,
                &mode,
                &["reviewer=false"],
            )
        })
        .collect();
    let started = Instant::now();
    let mut ids = Vec::new();
    for repo in &repos {
        let body = json!({
            "spec_path": "specs/demo.md",
            "plan_path": "PLAN.md",
            "workspace_root": repo.path.to_string_lossy(),
        });
        let v: Value = http
            .post(format!("{base}/runs"))
            .json(&body)
            .send()
            .await
            .expect("POST /runs")
            .json()
            .await
            .expect("run JSON");
        ids.push(
            v["run"]["id"]
                .as_str()
                .unwrap_or_else(|| panic!("no run id in {v}"))
                .to_string(),
        );
    }

    // The 529 wall, once half the agent steps were admitted.
    let half = (o.runs * AGENT_STEPS / 2) as u64;
    let mut wall_at = None;
    let mut ended: Vec<(String, Value)> = Vec::new();
    let deadline = started + o.deadline;
    let mut last_print = Instant::now();
    while Instant::now() < deadline {
        if wall_at.is_none() && provider.counts().accepted >= half {
            provider.overload(Instant::now(), o.wall);
            wall_at = Some(started.elapsed());
            println!("  529 wall from {:.0} s", started.elapsed().as_secs_f64());
        }
        ended.clear();
        for id in &ids {
            let Ok(r) = http.get(format!("{base}/runs/{id}")).send().await else {
                continue;
            };
            let Ok(v) = r.json::<Value>().await else {
                continue;
            };
            let status = v["run"]["status"].as_str().unwrap_or_default();
            if ["COMPLETED", "FAILED", "CANCELED"].contains(&status) {
                ended.push((status.to_string(), v["run"].clone()));
            }
        }
        if ended.len() == ids.len() {
            break;
        }
        if last_print.elapsed() > Duration::from_secs(15) {
            last_print = Instant::now();
            println!(
                "  {:.0} s: {} of {} runs ended; {:?}",
                started.elapsed().as_secs_f64(),
                ended.len(),
                ids.len(),
                provider.counts()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let completed = ended.iter().filter(|(s, _)| s == "COMPLETED").count();
    let failed = ended.len() - completed;
    let reasons = ended
        .iter()
        .filter(|(s, _)| s != "COMPLETED")
        .map(|(s, r)| format!("{s} {}", r["failure_reason"].as_str().unwrap_or_default()))
        .collect();
    let counts = provider.counts();
    println!(
        "  {completed} completed, {failed} failed, {} unfinished in {secs:.0} s; {counts:?}",
        ids.len() - ended.len()
    );
    drop(workers);
    drop(ctl);
    Figures {
        name,
        completed,
        failed,
        unfinished: ids.len() - ended.len(),
        reasons,
        counts,
        secs,
    }
}

/// Polls `check` every 100 ms until it answers, or gives up after `timeout`.
async fn wait<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
