//! loopd's own overhead per loop iteration on a single host.
//!
//! Starts a real `loopd --role single` on a temporary data dir, submits one run whose agent is
//! a tiny shell script (it prints `iteration K`, and the completion token at iteration N; no
//! review, no verification commands), and waits for the run to complete.
//!
//! An iteration is the implementation step plus its verification step. Its **cycle time** is
//! the time between the STEP_STARTED events of two consecutive implementation steps (from the
//! run's stored events, millisecond timestamps). The **overhead** of an iteration is its cycle
//! time minus the agent's own cost, measured here by running the same script with the same
//! kind of prompt directly (fork + exec + sh + its work) `N` times and taking the median.
//! What remains is what loopd adds: scheduling, leasing, prompt files, process-group spawn,
//! output capture and streaming, artifact uploads, the verification step, SQLite writes.
//! loopd's CPU time per iteration (from `/proc`) is printed too: on a busy machine it is
//! steadier than the times for comparing two builds.
//!
//! `LOOPD_BENCH_ITERATIONS` (default 50) sets N; `LOOPD_BENCH_LOG` is loopd's `RUST_LOG`;
//! `LOOPD_BENCH_KEEP` keeps the files (loopd's log) instead of measuring; `LOOPD_BENCH_BIN`
//! runs another loopd binary (to compare two builds under the same load).
//! Run: `cargo bench --bench iteration_overhead`.

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const AGENT: &str = r#"#!/bin/sh
# A no-op agent for the benchmark: counts its iterations in an untracked file.
n=$(cat .bench-count 2>/dev/null || echo 0)
n=$((n + 1))
echo "$n" > .bench-count
if [ "$n" -ge "$BENCH_N" ]; then echo "<promise>COMPLETE</promise>"; else echo "iteration $n"; fi
"#;

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.invalid")
        .env("GIT_COMMITTER_NAME", "bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.invalid")
        .stdout(Stdio::null())
        .status()
        .expect("git")
        .success();
    assert!(ok, "git {args:?}");
}

/// A workspace with a spec, a plan and a `.loop/config` running the no-op agent.
fn workspace(root: &Path, n: usize) -> std::path::PathBuf {
    let ws = root.join("ws");
    std::fs::create_dir_all(ws.join("specs")).expect("mkdir");
    std::fs::create_dir_all(ws.join(".loop")).expect("mkdir");
    std::fs::write(ws.join("specs/bench.md"), "# Bench\n").expect("spec");
    std::fs::write(ws.join("PLAN.md"), "# Plan\n\n- [ ] nothing\n").expect("plan");
    let agent = root.join("agent.sh");
    std::fs::write(&agent, AGENT.replace("$BENCH_N", &n.to_string())).expect("agent");
    let config = format!(
        "agent_cmd=sh {}\nreviewer=false\niterations={}\nagent_output=text\n",
        agent.display(),
        n + 5
    );
    std::fs::write(ws.join(".loop/config"), config).expect("config");
    std::fs::write(ws.join(".gitignore"), "logs/\n.bench-count\n").expect("gitignore");
    git(&ws, &["init", "-q", "-b", "main"]);
    git(&ws, &["add", "-A"]);
    git(&ws, &["commit", "-q", "-m", "initial"]);
    ws
}

/// The agent's own cost: the script run directly with a prompt-sized argument.
fn agent_cost(root: &Path, n: usize) -> Vec<f64> {
    let dir = root.join("direct");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let prompt = "x".repeat(3000);
    (0..n)
        .map(|_| {
            let t = Instant::now();
            let out = Command::new("sh")
                .arg(root.join("agent.sh"))
                .arg(&prompt)
                .current_dir(&dir)
                .stdin(Stdio::null())
                .output()
                .expect("agent");
            assert!(out.status.success());
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn summary(name: &str, v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let median = percentile(&s, 0.5);
    println!(
        "{name:<28} median {median:7.1} ms   p90 {:7.1} ms   max {:7.1} ms   (n = {})",
        percentile(&s, 0.9),
        s[s.len() - 1],
        s.len()
    );
    median
}

/// CPU time of `pid` so far, in ms: its own (utime + stime, all threads) and that of its
/// children it has waited for (cutime + cstime: agents, verify commands, git). Linux counts
/// in USER_HZ ticks, 100 per second.
fn cpu_ms(pid: u32) -> (f64, f64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces) start at the last ')'; the
    // first of them is field 3.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    let field = |i: usize| f.get(i - 3).copied().unwrap_or(0.0) * 10.0;
    (field(14) + field(15), field(16) + field(17))
}

async fn get(http: &reqwest::Client, url: &str) -> Option<Value> {
    http.get(url).send().await.ok()?.json().await.ok()
}

fn main() {
    let n: usize = std::env::var("LOOPD_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
        .max(3);
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let ws = workspace(root, n);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let log = std::fs::File::create(root.join("loopd.log")).expect("log");
    let bin =
        std::env::var("LOOPD_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_loopd").into());
    let mut daemon = Command::new(bin)
        .args(["--role", "single", "--bind", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(root.join("data"))
        .env(
            "RUST_LOG",
            std::env::var("LOOPD_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn loopd");
    let pid = daemon.id();
    let base = format!("http://127.0.0.1:{port}");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let result = rt.block_on(async {
        let http = reqwest::Client::new();
        let ready = Instant::now();
        while get(&http, &format!("{base}/ready")).await.is_none() {
            assert!(ready.elapsed() < Duration::from_secs(30), "loopd not ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let body = serde_json::json!({
            "spec_path": "specs/bench.md", "plan_path": "PLAN.md",
            "workspace_root": ws.to_string_lossy(),
        });
        let started = Instant::now();
        let cpu_before = cpu_ms(pid);
        let created: Value = http
            .post(format!("{base}/runs"))
            .json(&body)
            .send()
            .await
            .expect("POST /runs")
            .json()
            .await
            .expect("JSON");
        let id = created["run"]["id"].as_str().expect("run id").to_string();
        loop {
            let r = get(&http, &format!("{base}/runs/{id}")).await;
            let status = r.as_ref().map(|r| r["run"]["status"].clone());
            match status.as_ref().and_then(Value::as_str) {
                Some("COMPLETED") => break,
                Some("FAILED" | "CANCELED") => panic!("the run ended badly: {r:?}"),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
            assert!(started.elapsed() < Duration::from_secs(600), "too slow");
        }
        let total = started.elapsed();
        let cpu_after = cpu_ms(pid);
        let text = http
            .get(format!("{base}/runs/{id}/events"))
            .send()
            .await
            .expect("events")
            .text()
            .await
            .expect("events body");
        let cpu = (cpu_after.0 - cpu_before.0, cpu_after.1 - cpu_before.1);
        (total, text, cpu)
    });
    let _ = daemon.kill();
    let _ = daemon.wait();
    let (total, events, cpu) = result;
    if std::env::var_os("LOOPD_BENCH_KEEP").is_some() {
        println!("files kept in {}", tmp.keep().display());
        return;
    }
    // STEP_STARTED timestamps of the implementation steps, in order.
    let impl_starts: Vec<i64> = events
        .split("\n\n")
        .filter_map(|f| f.lines().find_map(|l| l.strip_prefix("data:")))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .filter(|e| e["event_type"] == "STEP_STARTED" && e["payload"]["phase"] == "implementation")
        .filter_map(|e| e["timestamp"].as_i64())
        .collect();
    assert_eq!(
        impl_starts.len(),
        n,
        "one implementation step per iteration"
    );
    let cycles: Vec<f64> = impl_starts
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64)
        .collect();
    let agent = agent_cost(root, n);

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "iteration_overhead: {n} iterations, load average {}",
        load.trim()
    );
    summary("cycle time per iteration", &cycles);
    let agent_median = summary("agent alone (direct spawn)", &agent);
    let overhead: Vec<f64> = cycles.iter().map(|c| c - agent_median).collect();
    let median = summary("loopd overhead per iteration", &overhead);
    let per_iter = total.as_secs_f64() * 1000.0 / n as f64 - agent_median;
    println!(
        "whole run: {:.0} ms from POST /runs to COMPLETED, {per_iter:.1} ms per iteration beyond the agent",
        total.as_secs_f64() * 1000.0
    );
    println!(
        "CPU per iteration: loopd {:.1} ms, its children (agent, verify, git) {:.1} ms",
        cpu.0 / n as f64,
        cpu.1 / n as f64
    );
    println!(
        "target: median overhead <= 15 ms per iteration: {}",
        if median <= 15.0 { "met" } else { "MISSED" }
    );
}
