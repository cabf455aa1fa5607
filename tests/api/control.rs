//! pause / resume / cancel / retry: 204 on a valid transition (and the run really does what
//! the verb says), 409 `invalid_transition` otherwise, with nothing changed.

use crate::harness::{error_of, Env, STATE_TIMEOUT};
use crate::support::{alive as pid_alive, hang_pids, wait_for};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn verb(env: &Env, id: &str, verb: &str) -> StatusCode {
    let r = env.post(&format!("/runs/{id}/{verb}")).await;
    let status = r.status();
    if status.is_success() {
        assert_eq!(status, StatusCode::NO_CONTENT, "{verb}");
        assert!(r.bytes().await.expect("body").is_empty(), "204 has no body");
    }
    status
}

async fn refused(env: &Env, id: &str, v: &str) {
    let before = env.get_json(&format!("/runs/{id}")).await["run"]["status"].clone();
    let events = run_events(env, id);
    let r = env.post(&format!("/runs/{id}/{v}")).await;
    let (status, code) = error_of(r).await;
    assert_eq!(status, StatusCode::CONFLICT, "{v} of a {before} run");
    assert_eq!(code, "invalid_transition", "{v} of a {before} run");
    let after = env.get_json(&format!("/runs/{id}")).await["run"]["status"].clone();
    assert_eq!(before, after, "a refused {v} changed the status");
    // The run may progress meanwhile, but no control event may appear.
    let now = run_events(env, id);
    assert_eq!(now[..events.len()], events[..], "events were rewritten");
    let control = ["RUN_PAUSED", "RUN_RESUMED", "RUN_CANCELED", "RUN_RETRIED"];
    let added = &now[events.len()..];
    assert!(
        added.iter().all(|t| !control.contains(&t.as_str())),
        "a refused {v} wrote {added:?}"
    );
}

/// The event types of run `id`, in order, read from the SQLite file.
fn run_events(env: &Env, id: &str) -> Vec<String> {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct E {
        #[diesel(sql_type = diesel::sql_types::Text)]
        event_type: String,
    }
    let mut c = crate::support::open_live_sqlite(&env.sqlite_path());
    diesel::sql_query("SELECT event_type FROM events WHERE run_id = ? ORDER BY run_seq")
        .bind::<diesel::sql_types::Text, _>(id)
        .load::<E>(&mut c)
        .expect("events")
        .into_iter()
        .map(|e| e.event_type)
        .collect()
}

async fn steps(env: &Env, id: &str) -> Vec<Value> {
    env.get_json(&format!("/runs/{id}/steps")).await["steps"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_run_pauses_resumes_and_cancels_killing_its_agent() {
    let env = Env::single("pause-cancel").await;
    let repo = env.repo("ws", 1, "hang");
    let run = env.create(&repo, json!({})).await;
    let id = run["id"].as_str().expect("id").to_string();
    env.wait_status(&id, "RUNNING").await;
    env.wait_step_in_progress(&id).await;
    let running = env.get_json(&format!("/runs/{id}")).await["run"].clone();
    refused(&env, &id, "resume").await;
    refused(&env, &id, "retry").await;

    assert_eq!(verb(&env, &id, "pause").await, StatusCode::NO_CONTENT);
    let paused = env.get_json(&format!("/runs/{id}")).await["run"].clone();
    assert_eq!(paused["status"], "PAUSED");
    assert!(paused["updated_at"].as_str() >= running["updated_at"].as_str());
    refused(&env, &id, "pause").await;
    refused(&env, &id, "retry").await;
    // The current step goes on while paused.
    assert!(steps(&env, &id)
        .await
        .iter()
        .any(|s| s["status"] == "IN_PROGRESS"));

    assert_eq!(verb(&env, &id, "resume").await, StatusCode::NO_CONTENT);
    env.wait_status(&id, "RUNNING").await;

    // The hanging agent and its child write their pids in the worktree.
    let wt = running["worktree"]["worktree_path"]
        .as_str()
        .expect("worktree")
        .to_string();
    let pids = hang_pids(std::path::Path::new(&wt)).await;
    assert!(pids.iter().all(|p| pid_alive(*p)));

    assert_eq!(verb(&env, &id, "cancel").await, StatusCode::NO_CONTENT);
    let canceled = env.get_json(&format!("/runs/{id}")).await["run"].clone();
    assert_eq!(canceled["status"], "CANCELED", "cancel is immediate");
    wait_for(
        "the agent's process group to be killed",
        STATE_TIMEOUT,
        || async { pids.iter().all(|p| !pid_alive(*p)).then_some(()) },
    )
    .await;
    wait_for("the step to settle", STATE_TIMEOUT, || async {
        let s = steps(&env, &id).await;
        s.iter()
            .all(|s| !matches!(s["status"].as_str(), Some("IN_PROGRESS" | "QUEUED")))
            .then_some(())
    })
    .await;
    for v in ["pause", "resume", "cancel", "retry"] {
        refused(&env, &id, v).await;
    }
    assert_eq!(
        env.get_json(&format!("/runs/{id}")).await["run"]["status"],
        "CANCELED"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_run_finishes_its_step_then_resume_really_continues() {
    let env = Env::single("pause-resume").await;
    let repo = env.repo("ws", 2, "slow 1");
    let run = env.create(&repo, json!({})).await;
    let id = run["id"].as_str().expect("id").to_string();
    env.wait_status(&id, "RUNNING").await;
    env.wait_step_in_progress(&id).await;
    assert_eq!(verb(&env, &id, "pause").await, StatusCode::NO_CONTENT);
    // The step in flight finishes; the next one is queued but does not start.
    let settled = wait_for("the in-flight step to finish", STATE_TIMEOUT, || async {
        let s = steps(&env, &id).await;
        let first_done = s.first().is_some_and(|s| s["status"] == "SUCCEEDED");
        let next_queued = s.len() == 2 && s[1]["status"] == "QUEUED";
        (first_done && next_queued).then_some(s)
    })
    .await;
    let run = env.get_json(&format!("/runs/{id}")).await["run"].clone();
    assert_eq!(run["status"], "PAUSED");
    assert_eq!(run["waiting_reason"], "paused");
    let workers = env.get_json("/workers").await;
    assert_eq!(
        workers["workers"][0]["leases"],
        json!([]),
        "the runner is idle"
    );
    let now = steps(&env, &id).await;
    assert_eq!(
        now[1]["status"], "QUEUED",
        "no new step starts while paused"
    );
    assert!(now[1]["started_at"].is_null());

    assert_eq!(verb(&env, &id, "resume").await, StatusCode::NO_CONTENT);
    env.wait_status(&id, "COMPLETED").await;
    let all = steps(&env, &id).await;
    assert!(all.len() > settled.len(), "resume ran more steps");
    let log = repo.subjects(
        env.get_json(&format!("/runs/{id}")).await["run"]["worktree"]["run_branch"]
            .as_str()
            .expect("branch"),
    );
    assert!(log.iter().any(|s| s.starts_with("task 2")), "{log:?}");
    for v in ["pause", "resume", "cancel", "retry"] {
        refused(&env, &id, v).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_is_retried_and_other_states_are_not() {
    let env = Env::single("retry").await;
    let repo = env.repo("ws", 1, "fail");
    let run = env.create(&repo, json!({})).await;
    let id = run["id"].as_str().expect("id").to_string();
    let failed = env.wait_status(&id, "FAILED").await;
    let first_steps = steps(&env, &id).await.len();
    refused(&env, &id, "pause").await;
    refused(&env, &id, "resume").await;

    assert_eq!(verb(&env, &id, "retry").await, StatusCode::NO_CONTENT);
    let retried = env.get_json(&format!("/runs/{id}")).await["run"].clone();
    assert!(
        matches!(
            retried["status"].as_str(),
            Some("PENDING" | "RUNNING" | "FAILED")
        ),
        "{retried}"
    );
    assert_ne!(retried["updated_at"], failed["updated_at"]);
    // It runs again (and fails again: the agent still fails), keeping the step history.
    wait_for(
        "the retried run to run a new step and fail",
        STATE_TIMEOUT,
        || async {
            let r = env.get_json(&format!("/runs/{id}")).await["run"].clone();
            let n = steps(&env, &id).await.len();
            (r["status"] == "FAILED" && n > first_steps).then_some(())
        },
    )
    .await;
}

/// A single host suspended longer than `worker_offline_after_ms` (a laptop asleep, a frozen
/// process) but less than its lease TTL keeps its running step when it wakes up: its
/// in-process worker lives exactly as long as the process and is never marked offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_host_suspended_past_the_offline_timeout_keeps_its_step() {
    use nix::sys::signal::Signal;
    let env = Env::single_with(
        "suspend",
        &[("LOOPD__LEASE__WORKER_OFFLINE_AFTER_MS", "600")],
    )
    .await;
    let repo = env.repo("suspended", 1, "slow 6");
    let id = env.create(&repo, json!({})).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    env.wait_step_in_progress(&id).await;
    for _ in 0..3 {
        env.daemon.signal(Signal::SIGSTOP);
        // The fault itself: the process stays frozen for twice the offline timeout.
        tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
        env.daemon.signal(Signal::SIGCONT);
        env.get_json("/health").await;
    }
    env.wait_status(&id, "COMPLETED").await;
    let events = run_events(&env, &id);
    assert!(
        !events
            .iter()
            .any(|e| e.starts_with("LEASE_") && e != "LEASE_GRANTED"),
        "the step lost its lease: {events:?}"
    );
    let offline = env.row_counts(&["events WHERE event_type = 'WORKER_OFFLINE'"]);
    assert_eq!(offline, [0], "the in-process worker was marked offline");
    let first = &steps(&env, &id).await[0];
    assert_eq!(first["lease_epoch"], 1, "{first}");
    assert_eq!(first["infra_attempts"], 0, "{first}");
}
