//! The controller itself frozen (SIGSTOP) for longer than its workers' lease and offline
//! periods while a worker runs a step: the worker's lease clock runs out, so it stops its
//! agent (it may no longer hold the lease); thawed, the controller must not blame the worker
//! for the silence it caused (no worker offline, no lease expired or released), the renewed
//! worker lets its agent go on, and the step completes once.

use crate::support::pg::TestDb;
use crate::support::pool::{self, controller_env, submit_git, wait_status};
use crate::support::repo::Repo;
use crate::support::{proc_state, test_dir, wait_for};
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

    // The agent's process group, as the worker records it while the agent runs.
    let sid = step["id"].as_str().expect("step id");
    let pid_file = dir.path().join("w0/work/pids").join(sid);
    let pgid: i32 = wait_for("the agent's pid file", LONG, || async {
        std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
    })
    .await;

    controller.signal(Signal::SIGSTOP);
    // Unrenewed for the offline limit by its own clock, the worker stops its agent.
    wait_for("the worker to stop its agent", LONG, || async {
        (proc_state(pgid).as_deref() == Some("T")).then_some(())
    })
    .await;
    // Frozen until the lease is past its expiry by the database clock (and so the worker's
    // last beat older than the offline limit, which is shorter).
    wait_lease_due(&db).await;
    assert_eq!(proc_state(pgid).as_deref(), Some("T"), "stopped all along");
    controller.signal(Signal::SIGCONT);
    // Renewed: the agent goes on (or has already finished).
    wait_for("the agent to go on", LONG, || async {
        (proc_state(pgid).as_deref() != Some("T")).then_some(())
    })
    .await;
    wait_status(&client, &base, &id, "COMPLETED", LONG).await;
    ran_once(&client, &base, &id, &step).await;
    let log = w.log_text();
    assert!(
        log.contains("lease clock ran out") && log.contains("lease renewed"),
        "the worker said what it did"
    );
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
