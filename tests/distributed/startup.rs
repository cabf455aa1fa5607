//! A worker and an absent controller: the worker answers `/health` while it waits, joins when
//! the controller comes up, and a SIGTERM while it waits stops it cleanly.

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

    c.controller.start();
    c.controller.wait_ready("/ready").await;
    c.wait_worker_status(w, "idle").await;
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
