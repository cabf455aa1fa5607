//! A worker and an absent controller: the worker answers `/health` while it waits (its
//! `/ready` and `loopd health` say it is not ready until it has registered), joins when the
//! controller comes up, and a SIGTERM while it waits stops it cleanly.

use crate::cluster::{Cluster, Timings, JOIN_TOKEN};
use crate::support::proc::Loopd;
use crate::support::repo::Repo;
use crate::support::{free_port, test_dir};
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_before_its_controller_is_healthy_and_joins_when_it_comes_up() {
    let mut c = Cluster::start("late-controller", 0, Timings::default()).await;
    c.controller.kill9();
    let url = c.controller.url();
    let w = c.spawn_worker(&url, &[], &[]);
    c.workers[w].wait_ready("/health").await;
    let ready = format!("{}/ready", c.workers[w].url());
    let http = reqwest::Client::new();
    let r = http.get(&ready).send().await.expect("worker /ready");
    assert_eq!(r.status(), 503, "ready before it registered");
    let body: serde_json::Value = r.json().await.expect("a JSON error body");
    assert_eq!(body["code"], "not_ready", "{body}");
    assert!(body["error"].is_string(), "{body}");
    let health = std::process::Command::new(crate::support::proc::bin())
        .args(["health", "--addr", &c.workers[w].url()])
        .output()
        .expect("loopd health");
    assert!(
        !health.status.success(),
        "loopd health passed before the worker registered"
    );

    c.controller.start();
    c.controller.wait_ready("/ready").await;
    c.wait_worker_status(w, "idle").await;
    // Registered: ready (the flag is set just before the runners start).
    c.workers[w].wait_ready("/ready").await;
    let health = std::process::Command::new(crate::support::proc::bin())
        .args(["health", "--addr", &c.workers[w].url()])
        .output()
        .expect("loopd health");
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );
    let repo = Repo::create(c.dir.path(), "origin", 1, "tick", &[]);
    let id = c.submit_git(&repo, &[]).await;
    c.wait_status(&id, "COMPLETED").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_worker_still_waiting_for_its_controller_cleanly() {
    let dir = test_dir("no-controller");
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let args = [
        "--role",
        "worker",
        "--controller",
        &nobody,
        "--join-token",
        JOIN_TOKEN,
    ];
    let mut worker = Loopd::spawn(dir.path(), &args, &[]);
    worker.wait_ready("/health").await;
    let asked = Instant::now();
    worker.signal(Signal::SIGTERM);
    let status = worker.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
}
