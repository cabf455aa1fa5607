//! A controller and two workers against the stand-in provider (`tests/support/provider.rs`),
//! each step run by the stub agent on a worker: calls refused with 429 and then 529 hand their
//! steps back to the controller without using an attempt, every run completes once the
//! provider admits calls again, and each run's usage is the sum of its steps' reports.

use crate::cluster::{Cluster, Timings};
use crate::support::provider::{self, Provider};
use crate::support::repo::Repo;
use crate::support::wait_for;
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_refused_by_the_provider_go_back_to_the_queue_and_every_run_completes() {
    // Two slots: the two runs never need more, so only the scripted refusals happen.
    let p = Provider::start(2, Duration::from_millis(100), 0.02).await;
    let c = Cluster::start("provider-pressure", 2, Timings::default()).await;
    let repo = Repo::create(
        c.dir.path(),
        "origin",
        1,
        &format!("provider {}", p.url()),
        &["reviewer=false"],
    );
    // Every slot taken by someone else: both runs' first calls are refused with 429.
    let held = p.occupy(2);
    let mut ids = Vec::new();
    for ws in ["pressure-a", "pressure-b"] {
        ids.push(
            c.submit(json!({
                "spec_path": "specs/demo.md",
                "plan_path": "PLAN.md",
                "workspace_root": ws,
                "name": ws,
                "workspace_source": "git",
                "repo_url": repo.url(),
            }))
            .await,
        );
    }
    let long = Duration::from_secs(60);
    wait_for("both first calls refused with 429", long, || async {
        (p.counts().rate_limited >= 2).then_some(())
    })
    .await;
    // Then an overload wall: the retried calls meet 529s.
    p.overload_now();
    drop(held);
    wait_for("both retried calls refused with 529", long, || async {
        (p.counts().overloaded >= 2).then_some(())
    })
    .await;
    p.end_overload();

    let mut spent = 0.0;
    let mut reported = 0;
    for id in &ids {
        let run = c.wait_status(id, "COMPLETED").await;
        // No step failed; the refused one kept its first attempt through three claims.
        let steps = c.steps(id).await;
        for st in &steps {
            assert_eq!(st["status"], "SUCCEEDED", "{st}");
            assert_eq!(st["infra_attempts"], 0, "{st}");
        }
        assert_eq!(steps[0]["attempt"], 1, "no attempt used: {}", steps[0]);
        assert_eq!(steps[0]["lease_epoch"], 3, "{}", steps[0]);
        let events = c.events(id).await;
        let released: Vec<&str> = events
            .iter()
            .filter(|e| e["event_type"] == "LEASE_RELEASED")
            .filter_map(|e| e["payload"]["reason"].as_str())
            .collect();
        assert!(
            released
                .iter()
                .any(|r| r.contains("agent API rate_limited")),
            "{id}: {released:?}"
        );
        assert!(
            released.iter().any(|r| r.contains("agent API overloaded")),
            "{id}: {released:?}"
        );
        let u: &Value = &run["usage"];
        let n = u["steps"].as_u64().unwrap_or(0);
        assert!(n >= 2, "two agent steps at least: {run}");
        let cost = u["total_cost_usd"].as_f64().unwrap_or(-1.0);
        assert!((cost - 0.02 * n as f64).abs() < 1e-9, "{run}");
        assert_eq!(u["input_tokens"], provider::INPUT_TOKENS * n, "{run}");
        spent += cost;
        reported += n;
    }
    // Every admitted call was reported by exactly one step.
    let counts = p.counts();
    assert_eq!(reported, counts.accepted, "{counts:?}");
    assert!((spent - 0.02 * counts.accepted as f64).abs() < 1e-9);
    assert_eq!(
        (counts.rate_limited, counts.overloaded),
        (2, 2),
        "{counts:?}"
    );
}
