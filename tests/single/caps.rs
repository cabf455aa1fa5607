//! The concurrency caps of a single host: `scheduler.max_concurrent_runs` and
//! `scheduler.max_runs_per_workspace` hold runs PENDING, their `waiting_reason` says which cap,
//! and a waiting run starts (oldest first) as soon as a run ends and frees its place.

use crate::helpers::{Single, STATE_TIMEOUT};
use crate::support::wait_for;
use serde_json::{json, Value};

/// Waits for run `id` to be PENDING with a waiting reason containing `cap`; the run.
async fn wait_held(s: &Single, id: &str, cap: &str) -> Value {
    let what = format!("run {id} held by {cap}");
    wait_for(&what, STATE_TIMEOUT, || async {
        let r = s.run(id).await;
        let held = r["status"] == "PENDING"
            && r["waiting_reason"]
                .as_str()
                .is_some_and(|w| w.contains(cap));
        held.then_some(r)
    })
    .await
}

async fn running(s: &Single, ids: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for id in ids {
        if s.run(id).await["status"] == "RUNNING" {
            out.push(id.to_string());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_wait_for_the_global_and_the_per_workspace_caps() {
    let s = Single::start(
        "caps",
        &[
            ("LOOPD__SCHEDULER__MAX_CONCURRENT_RUNS", "2"),
            ("LOOPD__SCHEDULER__MAX_RUNS_PER_WORKSPACE", "1"),
        ],
    )
    .await;
    let a = s.repo("a", 1, "hang", &["reviewer=false"]);
    let b = s.repo("b", 1, "hang", &["reviewer=false"]);
    let c = s.repo("c", 1, "hang", &["reviewer=false"]);
    let a1 = s.create(&a, json!({})).await;
    s.wait_step_in_progress(&a1).await;
    let a2 = s.create(&a, json!({"name": "second"})).await;
    let b1 = s.create(&b, json!({})).await;
    s.wait_step_in_progress(&b1).await;
    let c1 = s.create(&c, json!({})).await;

    let held = wait_held(&s, &a2, "max_runs_per_workspace = 1").await;
    assert!(held["worktree"].is_null(), "a held run has no worktree yet");
    wait_held(&s, &c1, "max_concurrent_runs = 2").await;
    // Held runs run nothing, while the two others keep running.
    for id in [&a2, &c1] {
        assert!(s.steps(id).await.is_empty(), "{id} has steps");
    }
    let all = [a1.as_str(), a2.as_str(), b1.as_str(), c1.as_str()];
    assert_eq!(running(&s, &all).await, [a1.clone(), b1.clone()]);

    // a1 ends: the workspace is free, and a2 (older than c1) takes the global place.
    s.verb(&a1, "cancel").await;
    s.wait_step_in_progress(&a2).await;
    let r = s.run(&a2).await;
    assert_eq!(r["status"], "RUNNING");
    assert!(r["waiting_reason"].is_null(), "{r}");
    wait_held(&s, &c1, "max_concurrent_runs = 2").await;
    assert!(s.steps(&c1).await.is_empty());
    assert_eq!(running(&s, &all).await, [a2.clone(), b1.clone()]);

    // b1 ends: c1 starts.
    s.verb(&b1, "cancel").await;
    s.wait_step_in_progress(&c1).await;
    assert!(s.run(&c1).await["waiting_reason"].is_null());
    assert_eq!(running(&s, &all).await, [a2.clone(), c1.clone()]);
    for id in [&a2, &c1] {
        s.verb(id, "cancel").await;
    }
}

/// A run whose workspace cannot be set up (a base branch that does not exist) fails at once;
/// the scheduler goes on starting runs: a valid run in another workspace completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_fails_at_setup_does_not_stop_later_runs_from_starting() {
    let s = Single::start("setup-failure", &[]).await;
    let bad = s.repo("bad", 1, "tick", &["reviewer=false"]);
    let good = s.repo("good", 1, "tick", &["reviewer=false"]);
    let failed = s.create(&bad, json!({"base_branch": "nope"})).await;
    let run = s.wait_status(&failed, "FAILED").await;
    assert!(
        s.steps(&failed).await.is_empty(),
        "a run failed at setup ran no step"
    );
    let reason_events = s.events(&failed).await;
    let why = reason_events
        .iter()
        .find(|e| e.event_type == "RUN_FAILED")
        .map(|e| e.payload["reason"].to_string())
        .unwrap_or_default();
    assert!(
        why.contains("nope"),
        "RUN_FAILED names the missing branch: {why} ({run})"
    );
    let ok = s.create(&good, json!({})).await;
    s.wait_status(&ok, "COMPLETED").await;
}
