//! Usage and cost: what the agent's stream-json `result` reported is stored on each step,
//! summed on the run, shown by `loopd inspect` and `loopd list`, and counted in `/metrics`.

use crate::helpers::Single;
use serde_json::{json, Value};

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_of_stub_results_is_stored_per_step_and_summed_on_the_run() {
    let s = Single::start("usage-summed", &[]).await;
    let repo = s.repo("ws", 2, "json 0.25", &["model=sonnet"]);
    let id = s.create(&repo, json!({})).await;
    let run = s.wait_status(&id, "COMPLETED").await;

    let steps = s.steps(&id).await;
    let agent: Vec<&Value> = steps
        .iter()
        .filter(|st| st["phase"] == "implementation")
        .collect();
    // Two tasks, then the step that prints the completion token (or more, should a step
    // repeat a task).
    let n = agent.len() as u64;
    assert!(n >= 3, "{steps:?}");
    for st in &agent {
        let u = &st["usage"];
        assert_eq!(f(&u["total_cost_usd"]), 0.25, "{st}");
        assert_eq!(u["input_tokens"], 100);
        assert_eq!(u["output_tokens"], 50);
        assert_eq!(u["cache_creation_input_tokens"], 10);
        assert_eq!(u["cache_read_input_tokens"], 1000);
        assert_eq!(u["num_turns"], 3);
        assert_eq!(u["subtype"], "success");
        assert_eq!(u["session_id"], "s-fake");
        assert_eq!(u["is_error"], false);
    }
    let u = &run["usage"];
    let cost = 0.25 * n as f64;
    assert!((f(&u["total_cost_usd"]) - cost).abs() < 1e-9, "{run}");
    assert_eq!(u["input_tokens"], 100 * n);
    assert_eq!(u["output_tokens"], 50 * n);
    assert_eq!(u["cache_read_input_tokens"], 1000 * n);
    assert_eq!(u["num_turns"], 3 * n);
    assert_eq!(u["steps"], n);
    // The list carries the same sum.
    let list = s.get_json("/runs").await;
    let listed = list["runs"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["id"] == id.as_str()))
        .cloned()
        .expect("the run is listed");
    assert_eq!(listed["usage"], run["usage"]);

    // The CLI: a cost column in the list, the figures in inspect.
    let (ok, out, err) = crate::client(&s.daemon, &repo.path, &["list"]);
    assert!(ok, "{err}");
    assert!(out.lines().next().unwrap_or("").contains("COST"), "{out}");
    let row = out.lines().find(|l| l.starts_with(&id)).expect("row");
    // Four decimals below a dollar, two above.
    let cost = if cost < 1.0 {
        format!("${cost:.4}")
    } else {
        format!("${cost:.2}")
    };
    assert!(row.contains(&cost), "{row}");
    let (ok, out, err) = crate::client(&s.daemon, &repo.path, &["inspect", &id]);
    assert!(ok, "{err}");
    assert!(out.contains(&cost), "{out}");
    assert!(
        out.contains(&format!("{} in, {} out", 100 * n, 50 * n)),
        "{out}"
    );

    // Counted by model.
    let metrics = String::from_utf8_lossy(&s.get_bytes("/metrics").await).to_string();
    let tokens = format!(
        r#"loopd_agent_tokens_total{{model="sonnet",kind="input"}} {}"#,
        100 * n
    );
    assert!(metrics.contains(&tokens), "{metrics}");
    let dollars = format!(
        r#"loopd_agent_cost_usd_total{{model="sonnet"}} {}"#,
        0.25 * n as f64
    );
    assert!(metrics.contains(&dollars), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_output_agents_have_no_usage() {
    let s = Single::start("usage-none", &[]).await;
    let repo = s.repo("ws", 1, "tick", &[]);
    let id = s.create(&repo, json!({})).await;
    let run = s.wait_status(&id, "COMPLETED").await;
    assert!(run["usage"].is_null(), "{run}");
    assert!(s.steps(&id).await.iter().all(|st| st["usage"].is_null()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cost_budget_stops_the_run_after_the_step_that_crossed_it() {
    let s = Single::start("usage-budget", &[]).await;
    // $0.25 a step, $0.40 allowed: the second step takes the run over.
    let repo = s.repo("ws", 5, "json 0.25", &["max_cost_usd=0.40"]);
    let id = s.create(&repo, json!({})).await;
    let run = s.wait_status(&id, "FAILED").await;
    let reason = run["failure_reason"].as_str().unwrap_or_default();
    assert_eq!(
        reason, "budget_exceeded:cost ($0.5000 spent, max_cost_usd $0.4000)",
        "{run}"
    );
    // impl, review, verification, impl: nothing after the step that crossed it.
    let steps = s.steps(&id).await;
    let phases: Vec<&str> = steps.iter().filter_map(|s| s["phase"].as_str()).collect();
    assert_eq!(
        phases,
        ["implementation", "review", "verification", "implementation"],
        "no step queued after the budget"
    );
    let events = s.events(&id).await;
    let failed = events
        .iter()
        .find(|e| e.event_type == "RUN_FAILED")
        .expect("RUN_FAILED");
    assert_eq!(failed.payload["reason"], reason, "{:?}", failed.payload);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_budget_stops_the_run_too() {
    let s = Single::start("usage-tokens", &[]).await;
    // 1160 tokens a step.
    let repo = s.repo("ws", 5, "json 0.01", &["max_tokens=3000"]);
    let id = s.create(&repo, json!({})).await;
    let run = s.wait_status(&id, "FAILED").await;
    assert_eq!(
        run["failure_reason"], "budget_exceeded:tokens (3480 tokens spent, max_tokens 3000)",
        "{run}"
    );
    let steps = s.steps(&id).await;
    let impls = steps
        .iter()
        .filter(|s| s["phase"] == "implementation")
        .count();
    assert_eq!(impls, 3, "{steps:?}");
    assert_eq!(
        steps.last().map(|s| &s["phase"]),
        Some(&json!("implementation"))
    );
}

/// A step whose agent met a 429 or a 529 goes back to the queue without using an attempt,
/// and is not offered again before its pause is over.
async fn requeued_without_an_attempt(name: &str, kind: &str, api: &str, pause_ms: i64) {
    let s = Single::start(name, &[]).await;
    let repo = s.repo("ws", 1, &format!("limited {kind}"), &["reviewer=false"]);
    let id = s.create(&repo, json!({})).await;
    s.wait_status(&id, "COMPLETED").await;
    let steps = s.steps(&id).await;
    let first = &steps[0];
    assert_eq!(first["phase"], "implementation");
    assert_eq!(first["status"], "SUCCEEDED", "{first}");
    assert_eq!(first["attempt"], 1, "{first}");
    assert_eq!(first["infra_attempts"], 0, "{first}");
    assert_eq!(first["lease_epoch"], 2, "claimed twice: {first}");
    let events = s.events(&id).await;
    let released = events
        .iter()
        .find(|e| e.event_type == "LEASE_RELEASED")
        .unwrap_or_else(|| panic!("no LEASE_RELEASED: {events:?}"));
    let reason = released.payload["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(&format!("agent API {api}")), "{reason}");
    // Granted again only after the pause.
    let grants: Vec<&crate::helpers::Event> = events
        .iter()
        .filter(|e| e.event_type == "LEASE_GRANTED" && e.step_id == released.step_id)
        .collect();
    assert_eq!(grants.len(), 2, "{events:?}");
    // Both leases run for the same time: their expiries are as far apart as their grants.
    let at = |e: &crate::helpers::Event| {
        e.payload["expires_at"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_millis())
            .expect("expires_at")
    };
    let apart = at(grants[1]) - at(grants[0]);
    assert!(apart >= pause_ms, "granted again after {apart} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_step_is_requeued_without_using_an_attempt() {
    requeued_without_an_attempt("api-429", "rate", "rate_limited", 10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_step_is_requeued_without_using_an_attempt() {
    requeued_without_an_attempt("api-529", "overloaded", "overloaded", 15_000).await;
}

/// `[budgets]`: a workspace that spent its daily budget has its new steps held (the run
/// waits, it does not fail) while other workspaces go on; a budget raised for that workspace
/// (`[[budgets.workspace]]`, after a restart) lets them go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daily_budget_holds_a_workspace_until_it_is_raised() {
    let budget = ("LOOPD__BUDGETS__DAILY_COST_USD", "0.40");
    let mut s = Single::start("usage-daily", &[budget]).await;
    // $0.25 a step: the second takes the workspace to $0.50.
    let held_repo = s.repo("held", 3, "json 0.25", &["reviewer=false"]);
    let held = s.create(&held_repo, json!({})).await;
    let reason = "daily budget reached: $0.5000 of $0.4000; resumes 00:00 UTC";
    let run = crate::support::wait_for(
        "the run to wait for its budget",
        crate::helpers::STATE_TIMEOUT,
        || async {
            let r = s.run(&held).await;
            (r["waiting_reason"] == reason).then_some(r)
        },
    )
    .await;
    assert_eq!(run["status"], "RUNNING", "{run}");
    assert!(
        (f(&run["usage"]["total_cost_usd"]) - 0.5).abs() < 1e-9,
        "{run}"
    );

    // Another workspace spends from its own budget and completes meanwhile.
    let free_repo = s.repo("free", 1, "json 0.1", &["reviewer=false"]);
    let free = s.create(&free_repo, json!({})).await;
    s.wait_status(&free, "COMPLETED").await;
    let steps = s.steps(&held).await;
    let last = steps.last().expect("steps");
    assert_eq!(last["status"], "QUEUED", "still held: {steps:?}");
    let agent_steps = steps.iter().filter(|st| !st["usage"].is_null()).count();
    assert_eq!(agent_steps, 2, "nothing ran past the budget: {steps:?}");

    // The budget raised for this workspace: the run goes on and completes.
    s.daemon.signal(nix::sys::signal::Signal::SIGTERM);
    s.daemon.wait_exit(std::time::Duration::from_secs(30)).await;
    let file = s.dir.path().join("budgets.toml");
    std::fs::write(
        &file,
        format!(
            "[[budgets.workspace]]\npath = \"{}\"\ndaily_cost_usd = 100\n",
            held_repo.path.display()
        ),
    )
    .expect("config file");
    let file = file.to_string_lossy().to_string();
    s.daemon = crate::support::proc::Loopd::spawn(
        &s.dir.path().join("data"),
        &["--role", "single"],
        &[
            budget,
            ("LOOPD_CONFIG", file.as_str()),
            ("LOOPD__SCHEDULER__TICK_INTERVAL_MS", "100"),
        ],
    );
    s.daemon.wait_ready("/ready").await;
    let run = s.wait_status(&held, "COMPLETED").await;
    assert!(run["waiting_reason"].is_null(), "{run}");
}
