//! The chaos soak, run on demand (it takes minutes):
//!
//! ```sh
//! cargo test --release --test chaos -- --ignored --nocapture
//! ```
//!
//! Two controllers on one Postgres database (docs/controllers.md; data dirs of their own, so
//! live output goes through the database; one fs artifact root), 3 workers that know both,
//! 20 git-mode runs of 5 iterations. Every few seconds a random worker is killed with SIGKILL
//! (and restarted) or frozen with SIGSTOP and thawed with SIGCONT; four times, a controller
//! (each in turn, the one holding the duties first) is killed with SIGKILL and restarted. At the end every run must be
//! COMPLETED, every task's commit must be in the final bundle exactly once (no duplicate, none
//! lost), and every succeeded step must have its events, its log artifact and all its output.
//! It prints the figures and fails if anything was duplicated, lost or left unfinished.
//! `LOOPD_SOAK_SECS` (default 300) is the least time the chaos goes on; `LOOPD_SOAK_STEP_SECS`
//! (default 6) how long each agent step takes.

#[path = "../support/mod.rs"]
mod support;

use nix::sys::signal::Signal;
use rand::Rng;
use serde_json::Value;
use std::time::{Duration, Instant};
use support::pg::TestDb;
use support::proc::Loopd;
use support::repo::Repo;
use support::{free_port, test_dir, wait_for};

const RUNS: usize = 20;
const TASKS: usize = 5;
const WORKERS: usize = 3;
const JOIN: &str = "soak-join-token-0001";

fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The controllers' settings: one database, and one artifact store (an fs root both see).
fn controller_env(db: &TestDb, artifacts: &std::path::Path) -> Vec<(String, String)> {
    [
        ("LOOPD__STORAGE__TYPE", "postgres".to_string()),
        ("LOOPD__STORAGE__URL", db.url.clone()),
        (
            "LOOPD__ARTIFACTS__ROOT",
            artifacts.to_string_lossy().to_string(),
        ),
        ("LOOPD_WORKER_JOIN_TOKEN", JOIN.into()),
        ("LOOPD__LEASE__TTL_MS", "4000".into()),
        ("LOOPD__LEASE__SWEEP_INTERVAL_MS", "250".into()),
        ("LOOPD__LEASE__WORKER_OFFLINE_AFTER_MS", "2500".into()),
        ("LOOPD__WORKER__HEARTBEAT_INTERVAL_MS", "500".into()),
        ("LOOPD__SCHEDULER__MAX_CONCURRENT_RUNS", "20".into()),
        ("LOOPD__SCHEDULER__MAX_RUNS_PER_WORKSPACE", "20".into()),
        ("LOOPD__SCHEDULER__MAX_INFRA_ATTEMPTS", "100".into()),
        ("LOOPD__SCHEDULER__AFFINITY_WINDOW_MS", "500".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn as_refs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(k, s)| (k.as_str(), s.as_str())).collect()
}

fn spawn_worker(dir: &std::path::Path, i: usize, controller: &str) -> Loopd {
    let env = [
        ("LOOPD_WORKER_JOIN_TOKEN", JOIN),
        ("LOOPD__WORKER__KILL_GRACE_MS", "500"),
    ];
    Loopd::spawn(
        &dir.join(format!("worker-{i}")),
        &["--role", "worker", "--controller", controller],
        &env,
    )
}

async fn submit(client: &reqwest::Client, base: &str, repo: &Repo, i: usize) -> String {
    let body = serde_json::json!({
        "spec_path": "specs/demo.md",
        "plan_path": "PLAN.md",
        "workspace_root": format!("soak-{i}"),
        "workspace_source": "git",
        "repo_url": repo.url(),
        "name": format!("soak-{i}"),
    });
    let r: Value = client
        .post(format!("{base}/runs"))
        .json(&body)
        .send()
        .await
        .expect("submit")
        .json()
        .await
        .expect("run json");
    r["run"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no run id: {r}"))
        .to_string()
}

/// Counts runs per terminal status (None while the controller is away).
async fn terminal_count(client: &reqwest::Client, base: &str) -> Option<usize> {
    let v: Value = client
        .get(format!("{base}/runs"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let runs = v["runs"].as_array()?;
    Some(
        runs.iter()
            .filter(|r| {
                matches!(
                    r["status"].as_str(),
                    Some("COMPLETED" | "FAILED" | "CANCELED")
                )
            })
            .count(),
    )
}

/// [`terminal_count`] through whichever controller answers.
async fn alive_count(client: &reqwest::Client, controllers: &[Loopd]) -> Option<usize> {
    for c in controllers {
        if let Some(n) = terminal_count(client, &c.url()).await {
            return Some(n);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a soak of several minutes: cargo test --release --test chaos -- --ignored --nocapture"]
async fn chaos_soak_completes_every_run_without_duplicates_or_losses() {
    let soak = Duration::from_secs(env_secs("LOOPD_SOAK_SECS", 300));
    let step_secs = env_secs("LOOPD_SOAK_STEP_SECS", 6);
    let dir = test_dir("chaos");
    let db = TestDb::create();
    let cenv = controller_env(&db, &dir.path().join("artifacts"));
    let port = free_port();
    let controller = Loopd::spawn_on(
        &dir.path().join("controller"),
        port,
        &["--role", "controller"],
        &as_refs(&cenv),
    );
    controller.wait_ready("/ready").await;
    // The second has a data dir of its own: the controllers share only the database.
    let second = controller.sibling(&dir.path().join("controller-2"));
    second.wait_ready("/ready").await;
    let mut controllers = [controller, second];
    let base = controllers[0].url();
    let both = format!("{},{}", controllers[0].url(), controllers[1].url());
    let mut workers: Vec<Loopd> = (0..WORKERS)
        .map(|i| spawn_worker(dir.path(), i, &both))
        .collect();
    let client = reqwest::Client::new();
    let slow = step_secs.to_string();
    let mut ids = Vec::new();
    let mut repos = Vec::new();
    for i in 0..RUNS {
        let mode = format!("slow {slow}");
        let repo = Repo::create(
            dir.path(),
            &format!("repo-{i}"),
            TASKS,
            &mode,
            &["reviewer=false", "verify_cmds=test -f PLAN.md"],
        );
        ids.push(submit(&client, &base, &repo, i).await);
        repos.push(repo);
    }
    let started = Instant::now();
    let mut rng = rand::thread_rng();
    let (mut kills, mut freezes, mut controller_kills) = (0, 0, 0usize);
    loop {
        let done = alive_count(&client, &controllers).await.unwrap_or(0);
        if done == RUNS && started.elapsed() >= soak.min(Duration::from_secs(60)) {
            break;
        }
        if started.elapsed() > soak + Duration::from_secs(600) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(2000..4000))).await;
        if controller_kills < 4 && started.elapsed() > soak * (controller_kills as u32 + 1) / 5 {
            let i = controller_kills % 2;
            println!(
                "[{:>4}s] controller {i}: SIGKILL and restart",
                started.elapsed().as_secs()
            );
            controllers[i].kill9();
            controllers[i].start();
            controllers[i].wait_ready("/ready").await;
            controller_kills += 1;
            continue;
        }
        if started.elapsed() > soak {
            continue; // chaos is over: let the runs finish
        }
        let w = rng.gen_range(0..WORKERS);
        if rng.gen_bool(0.5) {
            println!(
                "[{:>4}s] worker {w}: SIGKILL and restart",
                started.elapsed().as_secs()
            );
            workers[w].kill9();
            workers[w].start();
            kills += 1;
        } else {
            let frozen = Duration::from_millis(rng.gen_range(1000..6000));
            println!(
                "[{:>4}s] worker {w}: SIGSTOP for {} ms",
                started.elapsed().as_secs(),
                frozen.as_millis()
            );
            workers[w].signal(Signal::SIGSTOP);
            tokio::time::sleep(frozen).await;
            workers[w].signal(Signal::SIGCONT);
            freezes += 1;
        }
    }
    wait_for("every run to end", Duration::from_secs(600), || {
        let (client, controllers) = (client.clone(), &controllers);
        async move { (alive_count(&client, controllers).await? == RUNS).then_some(()) }
    })
    .await;
    let branches: Vec<String> = (0..RUNS).map(|i| format!("run/soak-{i}")).collect();
    let repo_refs: Vec<&Repo> = repos.iter().collect();
    let report = support::audit::verify_runs(
        &client,
        &base,
        &ids,
        &repo_refs,
        &branches,
        dir.path(),
        TASKS,
    )
    .await;
    println!(
        "\nchaos soak: {:.0} s, {kills} worker kills, {freezes} freezes, \
         {controller_kills} controller kills",
        started.elapsed().as_secs_f64()
    );
    println!("runs completed: {}/{RUNS}", report.completed);
    println!("duplicated task commits: {}", report.duplicates);
    println!(
        "lost items (task commits, events, artifacts, output bytes): {}",
        report.lost
    );
    println!("leases expired: {}", report.leases_expired);
    for p in &report.problems {
        println!("  problem: {p}");
    }
    assert!(
        report.completed == RUNS && report.duplicates == 0 && report.lost == 0,
        "the soak found problems (see above); logs under {}",
        dir.path().display()
    );
}
