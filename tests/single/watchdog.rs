//! The watchdog on a single host: an agent that says it is stuck gets a rewritten prompt with
//! an intervention and goes on to complete; one that stays stuck fails the run once the
//! rewrites are used up, with a reason that says so.

use crate::helpers::Single;
use serde_json::json;

const INTERVENTION: &str = "## Watchdog Intervention";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_agent_gets_an_intervention_and_completes() {
    let s = Single::start("watchdog-stuck", &[]).await;
    let repo = s.repo("ws", 2, "stuck", &["reviewer=false"]);
    let id = s.create(&repo, json!({})).await;
    let run = s.wait_status(&id, "COMPLETED").await;

    let events = s.events(&id).await;
    let rewrites: Vec<_> = events
        .iter()
        .filter(|e| e.event_type == "WATCHDOG_REWRITE")
        .collect();
    assert_eq!(rewrites.len(), 1, "one intervention was enough");
    let rw = rewrites[0];
    assert_eq!(rw.payload["signal"], "no_progress");
    assert_eq!(rw.payload["prompt_before"], "prompt.txt");
    let steps = s.steps(&id).await;
    let first_impl = &steps[0];
    assert_eq!(first_impl["phase"], "implementation");
    assert_eq!(
        rw.payload["step_id"], steps[1]["id"],
        "the rewrite follows the verification of the stuck iteration"
    );
    let after = rw.payload["prompt_after"].as_str().expect("prompt_after");
    let rewritten = s.artifact_text(&id, after).await;
    assert!(rewritten.contains(INTERVENTION), "{rewritten}");
    assert!(rewritten.contains("Do not stop or ask for clarification"));
    // The rewritten prompt is the stuck iteration's prompt behind the intervention.
    let (_, base) = rewritten.split_once("---\n\n").expect("separator");
    let (_, base) = base.split_once("---\n\n").expect("second separator");
    assert!(base.starts_with('@'), "the refs line follows: {base}");

    // The iteration after the rewrite worked on the first task: it ran with the intervention.
    let impls: Vec<_> = steps
        .iter()
        .filter(|st| st["phase"] == "implementation")
        .collect();
    let first = s.step_log(&id, &impls[0]["id"]).await;
    assert!(first.contains("I'm stuck"), "{first}");
    let second = s.step_log(&id, &impls[1]["id"]).await;
    assert!(second.contains("Worked on: task number 1"), "{second}");
    let branch = run["worktree"]["run_branch"].as_str().expect("branch");
    assert_eq!(
        repo.subjects(branch),
        ["initial", "task 1: task number 1", "task 2: task number 2"]
    );
    assert!(events
        .iter()
        .all(|e| e.event_type != "RUN_FAILED" && e.event_type != "STEP_FAILED"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_stays_stuck_fails_the_run_after_the_rewrite_limit() {
    let s = Single::start("watchdog-always", &[]).await;
    let repo = s.repo("ws", 2, "always-stuck", &["reviewer=false"]);
    let id = s.create(&repo, json!({})).await;
    let run = s.wait_status(&id, "FAILED").await;
    assert_eq!(run["failure_reason"], "watchdog_failed:NoProgress", "{run}");

    let events = s.events(&id).await;
    let rewrites: Vec<_> = events
        .iter()
        .filter(|e| e.event_type == "WATCHDOG_REWRITE")
        .collect();
    assert_eq!(rewrites.len(), 2, "the limit is two rewrites");
    for (n, rw) in rewrites.iter().enumerate() {
        assert_eq!(rw.payload["signal"], "no_progress");
        let name = format!("prompt.rewrite.{}.txt", n + 1);
        assert_eq!(rw.payload["prompt_after"], name.as_str());
        assert!(s.artifact_text(&id, &name).await.contains(INTERVENTION));
    }
    let last = events.last().expect("events");
    assert_eq!(last.event_type, "RUN_FAILED");
    assert_eq!(last.payload["reason"], "watchdog_failed:NoProgress");
    // Three stuck iterations: the third one's signal found no rewrite left.
    let steps = s.steps(&id).await;
    let impls = steps
        .iter()
        .filter(|st| st["phase"] == "implementation")
        .count();
    assert_eq!(impls, 3, "{steps:?}");
    assert!(steps
        .iter()
        .all(|st| st["status"] == "SUCCEEDED" || st["phase"] == "merge"));
    let branch = run["worktree"]["run_branch"].as_str().expect("branch");
    assert_eq!(repo.subjects(branch), ["initial"], "nothing was done");
}
