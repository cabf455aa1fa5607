//! The controller itself frozen (SIGSTOP) for longer than its workers' lease and offline
//! periods while a worker runs a step: thawed, it must not blame the worker for the silence
//! it caused (no worker offline, no lease expired or released), and the step completes once.

use crate::support::pg::TestDb;
use crate::support::pool::{self, controller_env, submit_git, wait_status};
use crate::support::repo::Repo;
use crate::support::test_dir;
use crate::{count, ran_once, wait_lease_due, wait_started, LONG};
use nix::sys::signal::Signal;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_frozen_past_its_workers_leases_takes_no_step_from_them() {
    let dir = test_dir("controller-frozen");
    let db = TestDb::create();
    let env = controller_env(
        &db.url,
        &[
            ("LOOPD__LEASE__TTL_MS", "6000"),
            ("LOOPD__LEASE__SWEEP_INTERVAL_MS", "200"),
            ("LOOPD__LEASE__WORKER_OFFLINE_AFTER_MS", "4000"),
        ],
    );
    let controller = pool::controller(dir.path(), &env).await;
    let base = controller.url();
    let client = reqwest::Client::new();
    let w = pool::worker(
        dir.path(),
        "w0",
        &base,
        &[("LOOPD__WORKER__HEARTBEAT_INTERVAL_MS", "300")],
    );
    let repo = Repo::create(dir.path(), "frozen", 1, "slow 12", &["reviewer=false"]);
    let id = submit_git(&client, &base, &repo, "frozen").await;
    let (step, _) = pool::running_step(&client, &base, &id, LONG).await;
    wait_started(&w, &step).await;

    controller.signal(Signal::SIGSTOP);
    // Frozen until the lease is past its expiry by the database clock (and so the worker's
    // last beat older than the offline limit, which is shorter).
    wait_lease_due(&db).await;
    controller.signal(Signal::SIGCONT);
    wait_status(&client, &base, &id, "COMPLETED", LONG).await;
    ran_once(&client, &base, &id, &step).await;
    let taken = count(
        &db,
        "SELECT count(*) AS n FROM events WHERE event_type IN \
         ('WORKER_OFFLINE', 'LEASE_EXPIRED', 'LEASE_RELEASED')",
    );
    assert_eq!(taken, 0, "the thawed controller blamed its worker");
    assert!(
        controller
            .log_text()
            .contains("every lease gets a fresh period")
            || controller
                .log_text()
                .contains("every online worker gets a fresh period"),
        "the controller noticed its own pause"
    );
}
