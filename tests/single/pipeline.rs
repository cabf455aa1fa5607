//! The run pipeline of a single host: a failing verification writes the runner notes, the next
//! implementation prompt points the agent at them and the agent fixes the failure; the events
//! and artifacts of the completed run are complete, ordered and intact.

use crate::helpers::{phase_of, Event, Single};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashSet;

/// Events are stored in order and none is missing: cursors grow, the run is created first and
/// its terminal event is last, every started step finished, and nothing follows the end.
fn assert_complete_and_ordered(events: &[Event], terminal: &str) {
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert!(
        events.windows(2).all(|w| w[0].cursor < w[1].cursor),
        "cursors strictly increase: {types:?}"
    );
    assert_eq!(types.first(), Some(&"RUN_CREATED"), "{types:?}");
    assert_eq!(types.last(), Some(&terminal), "{types:?}");
    assert_eq!(
        types.iter().filter(|t| **t == terminal).count(),
        1,
        "{types:?}"
    );
    let started = types.iter().position(|t| *t == "RUN_STARTED");
    let first_step = types.iter().position(|t| *t == "STEP_STARTED");
    assert!(
        started.is_some() && started < first_step,
        "RUN_STARTED precedes the first step: {types:?}"
    );
    let finished: HashSet<&str> = events
        .iter()
        .filter(|e| matches!(e.event_type.as_str(), "STEP_FINISHED" | "STEP_FAILED"))
        .filter_map(|e| e.step_id.as_deref())
        .collect();
    for e in events.iter().filter(|e| e.event_type == "STEP_STARTED") {
        let id = e.step_id.as_deref().unwrap_or_default();
        assert!(finished.contains(id), "step {id} started, never finished");
    }
}

/// Every listed artifact downloads with the recorded size and sha256, and its newest
/// ARTIFACT_STORED event records the same.
async fn assert_artifacts_intact(s: &Single, id: &str, events: &[Event]) -> Vec<Value> {
    let list = s.artifacts(id).await;
    assert!(!list.is_empty());
    for a in &list {
        let name = a["name"].as_str().expect("name");
        let bytes = s.get_bytes(&format!("/runs/{id}/artifacts/{name}")).await;
        assert_eq!(Some(bytes.len() as u64), a["size"].as_u64(), "{name}");
        let sha = hex::encode(Sha256::digest(&bytes));
        assert_eq!(a["sha256"], sha.as_str(), "{name}");
        let stored = events
            .iter()
            .rev()
            .find(|e| e.event_type == "ARTIFACT_STORED" && e.payload["name"] == name)
            .unwrap_or_else(|| panic!("no ARTIFACT_STORED for {name}"));
        assert_eq!(stored.payload["sha256"], sha.as_str(), "{name}");
        assert_eq!(stored.payload["size"], a["size"], "{name}");
    }
    list
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_verification_is_fixed_through_the_runner_notes() {
    let s = Single::start("verify-fix", &[]).await;
    let repo = s.repo(
        "ws",
        1,
        "tick",
        &["verify_cmds=test -f fixed.txt", "reviewer=false"],
    );
    let id = s.create(&repo, json!({})).await;
    let run = s.wait_status(&id, "COMPLETED").await;

    let steps = s.steps(&id).await;
    let shape: Vec<(String, String)> = steps
        .iter()
        .map(|st| (st["phase"].to_string(), st["status"].to_string()))
        .collect();
    let phases: Vec<&str> = steps.iter().filter_map(|st| st["phase"].as_str()).collect();
    assert_eq!(
        phases,
        [
            "implementation",
            "verification",
            "implementation",
            "verification",
            "implementation",
            "verification"
        ],
        "{shape:?}"
    );
    let failed_verify = &steps[1];
    assert_eq!(failed_verify["status"], "FAILED", "{shape:?}");
    assert_eq!(failed_verify["exit_code"], 1);
    for st in steps.iter().skip(2) {
        assert_eq!(st["status"], "SUCCEEDED", "{shape:?}");
    }
    for st in &steps {
        assert!(st["started_at"].is_string() && st["ended_at"].is_string());
    }

    let events = s.events(&id).await;
    assert_complete_and_ordered(&events, "RUN_COMPLETED");
    // The verifications end as STEP_FINISHED with their exit code: failed, then passed.
    let verify_exits: Vec<i64> = events
        .iter()
        .filter(|e| e.event_type == "STEP_FINISHED")
        .filter(|e| phase_of(&events, e.step_id.as_deref().unwrap_or_default()) == "verification")
        .filter_map(|e| e.payload["exit_code"].as_i64())
        .collect();
    assert_eq!(verify_exits, [1, 0, 0], "failed, fixed, final");

    // The failed verification's runner notes name the command.
    let artifacts = assert_artifacts_intact(&s, &id, &events).await;
    let notes = artifacts
        .iter()
        .find(|a| a["name"] == "runner-notes.txt")
        .expect("runner-notes.txt artifact");
    assert_eq!(notes["step_id"], failed_verify["id"]);
    assert_eq!(notes["kind"], "runner_notes");
    let text = s.artifact_text(&id, "runner-notes.txt").await;
    assert!(
        text.contains("--- FAILED: test -f fixed.txt (exit 1) ---"),
        "{text}"
    );

    // The implementation prompt points at the run's runner-notes file …
    let root = repo.path.canonicalize().expect("root");
    let notes_path = root
        .join(format!("logs/loop/run-{id}/runner-notes.txt"))
        .to_string_lossy()
        .to_string();
    let prompt = s.artifact_text(&id, "prompt.txt").await;
    let refs: Vec<&str> = prompt
        .lines()
        .next()
        .unwrap_or_default()
        .split(' ')
        .collect();
    assert!(
        refs.contains(&format!("@{notes_path}").as_str()),
        "{prompt}"
    );
    // … which the next iteration found holding the failure and acted on; it is empty again
    // once the verification passed.
    let fix = s.step_log(&id, &steps[2]["id"]).await;
    assert!(
        fix.contains("Fixed what the runner notes reported."),
        "{fix}"
    );
    assert_eq!(std::fs::read_to_string(&notes_path).expect("notes"), "");
    let branch = run["worktree"]["run_branch"].as_str().expect("branch");
    assert_eq!(
        repo.subjects(branch),
        [
            "initial",
            "task 1: task number 1",
            "fix the failing verification"
        ]
    );
}

/// A completed two-task run whose branch is merged into `integration`, a branch that moved on
/// since the run started; returns the repository, the run and the old head of `integration`.
async fn merged_run(s: &Single, strategy: &str) -> (crate::support::repo::Repo, Value, String) {
    let repo = s.repo(
        "ws",
        2,
        "tick",
        &[
            "reviewer=false",
            "merge_target_branch=integration",
            &format!("merge_strategy={strategy}"),
        ],
    );
    repo.git(&["checkout", "-q", "-b", "integration"]);
    std::fs::write(repo.path.join("other.txt"), "other work\n").expect("write");
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-q", "-m", "other work on integration"]);
    repo.git(&["checkout", "-q", "main"]);
    let before = repo.git(&["rev-parse", "integration"]).trim().to_string();

    let id = s.create(&repo, json!({})).await;
    let run = s.wait_status(&id, "COMPLETED").await;
    assert_eq!(run["worktree"]["merge_target_branch"], "integration");
    assert_eq!(run["worktree"]["merge_strategy"], strategy);
    let head = repo.git(&["rev-parse", "integration"]).trim().to_string();
    assert_eq!(
        run["merge_commit"],
        head.as_str(),
        "merge_commit is the new head"
    );

    let steps = s.steps(&id).await;
    let last = steps.last().expect("steps");
    assert_eq!(last["phase"], "merge");
    assert_eq!(last["status"], "SUCCEEDED");
    let events = s.events(&id).await;
    assert_complete_and_ordered(&events, "RUN_COMPLETED");
    let done = events.last().expect("events");
    assert_eq!(done.payload["mode"], "merge");
    // The merged tree has the run's work and the target's own.
    let files = repo.git(&["ls-tree", "--name-only", "integration"]);
    for f in ["task-1.txt", "task-2.txt", "other.txt", "PLAN.md"] {
        assert!(files.lines().any(|l| l == f), "{f} in {files}");
    }
    let plan = repo.git(&["show", "integration:PLAN.md"]);
    assert!(!plan.contains("- [ ]"), "the ticked plan is merged: {plan}");
    // The primary checkout stays on main, untouched.
    assert_eq!(repo.git(&["branch", "--show-current"]).trim(), "main");
    assert_eq!(repo.git(&["status", "--porcelain"]).trim(), "");
    (repo, run, before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_run_is_merged_into_its_target_with_a_merge_commit() {
    let s = Single::start("merge", &[]).await;
    let (repo, run, before) = merged_run(&s, "merge").await;
    let branch = run["worktree"]["run_branch"].as_str().expect("branch");
    let run_head = repo.git(&["rev-parse", branch]).trim().to_string();
    let parents = repo.git(&["rev-list", "--parents", "-n", "1", "integration"]);
    let parents: Vec<&str> = parents.split_whitespace().skip(1).collect();
    assert_eq!(parents, [before.as_str(), run_head.as_str()]);
    assert_eq!(
        repo.subjects("integration").last().map(String::as_str),
        Some(format!("Merge branch '{branch}' into integration").as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_run_is_squashed_into_its_target() {
    let s = Single::start("squash", &[]).await;
    let (repo, run, before) = merged_run(&s, "squash").await;
    let branch = run["worktree"]["run_branch"].as_str().expect("branch");
    let parents = repo.git(&["rev-list", "--parents", "-n", "1", "integration"]);
    let parents: Vec<&str> = parents.split_whitespace().skip(1).collect();
    assert_eq!(parents, [before.as_str()], "one commit on the old head");
    assert_eq!(
        repo.subjects("integration"),
        [
            "initial".to_string(),
            "other work on integration".to_string(),
            format!("Squash merge from {branch}")
        ]
    );
}
