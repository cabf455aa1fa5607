//! Usage reported with completions on Postgres: stored on the step once (a repeated completion
//! adds nothing), summed on the run, counted in `/metrics`; budgets end a run; a workspace's
//! daily budget holds its new steps.

use crate::harness::{answer, Ctl, Lease, Worker};
use crate::support::wait_for;
use serde_json::{json, Value};
use std::time::Duration;

fn with_usage(l: &Lease, cost: f64, input: u64) -> Value {
    let mut body = Worker::completion(l);
    body["usage"] = json!({
        "total_cost_usd": cost, "input_tokens": input, "output_tokens": 7,
        "cache_creation_input_tokens": 0, "cache_read_input_tokens": 11, "num_turns": 2,
        "duration_api_ms": 900, "is_error": false, "subtype": "success", "session_id": "s1"
    });
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_recorded_once_and_summed_on_postgres() {
    let ctl = Ctl::start("usage-pg", &[]).await;
    let run = ctl.submit("u", 3, &[]).await;
    let w = ctl.worker("h1", &[]).await;

    let (first, _) = w.take().await;
    let body = with_usage(&first, 0.5, 40);
    assert_eq!(w.complete(&first, &body).await.0, 200);
    // A repeat of the same completion is accepted and counts nothing twice.
    assert_eq!(w.complete(&first, &body).await.0, 200);
    ctl.queued_step(&run).await;
    let (second, _) = w.take().await;
    assert_eq!(
        w.complete(&second, &with_usage(&second, 0.25, 2)).await.0,
        200
    );

    let r = ctl.run(&run).await;
    assert_eq!(r["usage"]["total_cost_usd"], 0.75, "{r}");
    assert_eq!(r["usage"]["input_tokens"], 42);
    assert_eq!(r["usage"]["cache_read_input_tokens"], 22);
    assert_eq!(r["usage"]["steps"], 2);
    let step = ctl.step(&run, &first.step).await;
    assert_eq!(step["usage"]["input_tokens"], 40, "{step}");
    assert_eq!(step["usage"]["session_id"], "s1");

    let (status, text) = answer(ctl.client.get(ctl.url("/metrics"))).await;
    assert_eq!(status, 200);
    let text = text.as_str().unwrap_or_default().to_string();
    assert!(
        text.contains(r#"loopd_agent_tokens_total{model="opus",kind="input"} 42"#),
        "{text}"
    );
    assert!(
        text.contains(r#"loopd_agent_cost_usd_total{model="opus"} 0.75"#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daily_budget_holds_the_workspace_new_steps_with_a_reason() {
    let ctl = Ctl::start("usage-daily", &[("LOOPD__BUDGETS__DAILY_COST_USD", "0.6")]).await;
    let held = ctl.submit("held", 5, &[]).await;
    let w = ctl.worker("h1", &[]).await;

    // $0.50: under the budget, the next step is claimable.
    let (first, _) = w.take().await;
    assert_eq!(
        w.complete(&first, &with_usage(&first, 0.5, 40)).await.0,
        200
    );
    ctl.queued_step(&held).await;
    let (second, _) = w.take().await;
    assert_eq!(second.run, held);
    // $0.75: the budget is reached; the step queued after it waits for the next UTC day.
    assert_eq!(
        w.complete(&second, &with_usage(&second, 0.25, 2)).await.0,
        200
    );
    let waiting = ctl.queued_step(&held).await;
    assert_eq!(w.claim(1000).await.0, 204, "the held step is not claimable");
    let run = wait_for(
        "the run to say why it waits",
        Duration::from_secs(20),
        || async {
            let r = ctl.run(&held).await;
            r["waiting_reason"].as_str().is_some().then_some(r)
        },
    )
    .await;
    assert_eq!(
        run["waiting_reason"], "daily budget reached: $0.7500 of $0.6000; resumes 00:00 UTC",
        "{run}"
    );
    assert_eq!(run["status"], "RUNNING", "held, not failed: {run}");

    // Another workspace has a budget of its own: its steps go on.
    let other = ctl.submit("other", 2, &[]).await;
    let (l, _) = w.take().await;
    assert_eq!(l.run, other, "the other workspace's step, not the held one");
    assert_eq!(w.complete(&l, &with_usage(&l, 0.25, 2)).await.0, 200);
    ctl.queued_step(&other).await;
    let (l, _) = w.take().await;
    assert_eq!(l.run, other);
    let step = ctl.step(&held, &waiting).await;
    assert_eq!(step["status"], "QUEUED", "{step}");
}
