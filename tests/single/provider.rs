//! A single-role daemon against the stand-in provider (`tests/support/provider.rs`), its steps
//! run by the stub agent: a 429 and then a 529 hand the step back without using an attempt,
//! the run completes once the provider admits calls again, and the run's usage is the sum of
//! what the provider's admitted calls reported; the account's usage limit holds every step of
//! the account, in any run, until its reset time.

use crate::helpers::Single;
use crate::support::provider::{self, Provider};
use crate::support::wait_for;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_rides_out_a_429_and_a_529_of_the_provider_and_sums_its_usage() {
    let p = Provider::start(1, Duration::from_millis(100), 0.05).await;
    let s = Single::start("provider-429-529", &[]).await;
    // Another client holds the provider's only slot: the first call is refused with a 429.
    let held = p.occupy(1);
    let repo = s.repo(
        "ws",
        1,
        &format!("provider {}", p.url()),
        &["reviewer=false", "model=sonnet"],
    );
    let id = s.create(&repo, json!({})).await;
    let long = Duration::from_secs(60);
    wait_for("a call refused with 429", long, || async {
        (p.counts().rate_limited >= 1).then_some(())
    })
    .await;
    // The slot is free, but the provider is overloaded: the step's next call meets a 529.
    p.overload_now();
    drop(held);
    wait_for("a call refused with 529", long, || async {
        (p.counts().overloaded >= 1).then_some(())
    })
    .await;
    p.end_overload();
    let run = s.wait_status(&id, "COMPLETED").await;

    let c = p.counts();
    assert_eq!((c.rate_limited, c.overloaded), (1, 1), "{c:?}");
    let steps = s.steps(&id).await;
    // No step failed; the refused one kept its first attempt through three claims.
    for st in &steps {
        assert_eq!(st["status"], "SUCCEEDED", "{st}");
        assert_eq!(st["infra_attempts"], 0, "{st}");
    }
    assert_eq!(steps[0]["attempt"], 1, "no attempt used: {}", steps[0]);
    assert_eq!(
        steps[0]["lease_epoch"], 3,
        "claimed three times: {}",
        steps[0]
    );
    let events = s.events(&id).await;
    let reasons: Vec<&str> = events
        .iter()
        .filter(|e| e.event_type == "LEASE_RELEASED")
        .filter_map(|e| e.payload["reason"].as_str())
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].contains("agent API rate_limited"), "{reasons:?}");
    assert!(reasons[1].contains("agent API overloaded"), "{reasons:?}");

    // Every admitted call was one agent step of this run, and reported its usage.
    let u = &run["usage"];
    assert_eq!(u["steps"], c.accepted, "{run}");
    let cost = u["total_cost_usd"].as_f64().unwrap_or(-1.0);
    assert!((cost - 0.05 * c.accepted as f64).abs() < 1e-9, "{run}");
    assert_eq!(u["input_tokens"], provider::INPUT_TOKENS * c.accepted);
    assert_eq!(u["output_tokens"], provider::OUTPUT_TOKENS * c.accepted);
    assert_eq!(
        u["cache_read_input_tokens"],
        provider::CACHE_READ_TOKENS * c.accepted
    );
    let agent_steps = steps
        .iter()
        .filter(|st| st["phase"] == "implementation")
        .count() as u64;
    assert_eq!(agent_steps, c.accepted, "{steps:?}");
}

/// The account's usage limit, with its reset time in the message: the step goes back until
/// then, and no step of the same account (the same model and agent command) is given out
/// before the reset, in any run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_usage_limit_holds_every_step_of_the_account_until_its_reset() {
    let p = Provider::start(4, Duration::from_millis(100), 0.05).await;
    let s = Single::start("provider-usage-limit", &[]).await;
    let now = chrono::Utc::now().timestamp();
    let reset = now + 8;
    p.usage_limit_until(reset);
    let mode = format!("provider {}", p.url());
    let config = ["reviewer=false", "model=sonnet"];
    let first = s.repo("first", 1, &mode, &config);
    let first = s.create(&first, json!({})).await;
    wait_for(
        "the refused step handed back",
        Duration::from_secs(30),
        || async {
            let steps = s.steps(&first).await;
            let st = steps.first()?;
            (st["status"] == "RETRYING").then_some(())
        },
    )
    .await;
    assert_eq!(p.counts().usage_limited, 1);
    // Another run of the same account, submitted during the pause.
    let second = s.repo("second", 1, &mode, &config);
    let second = s.create(&second, json!({})).await;
    let run = s.wait_status(&second, "COMPLETED").await;
    s.wait_status(&first, "COMPLETED").await;
    let c = p.counts();
    assert_eq!(c.usage_limited, 1, "no call before the reset: {c:?}");
    assert!(run["usage"]["steps"].as_u64().unwrap_or(0) >= 2, "{run}");
    let events = s.events(&first).await;
    let released = events
        .iter()
        .find(|e| e.event_type == "LEASE_RELEASED")
        .expect("the refused step was handed back");
    assert!(
        released.payload["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("agent API usage_limit"),
        "{:?}",
        released.payload
    );
    assert!(chrono::Utc::now().timestamp() >= reset);
}

/// Three agents at once against a provider that admits one call: the 429s halve the account's
/// limit in the single role's SQLite database, `GET /workers` shows it, and every run
/// completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_halve_the_accounts_limit_and_every_run_completes() {
    let p = Provider::start(1, Duration::from_secs(3), 0.05).await;
    let s = Single::start(
        "provider-aimd",
        &[
            ("LOOPD__WORKER__SLOTS", "3"),
            ("LOOPD__SCHEDULER__MAX_CONCURRENT_RUNS", "3"),
            ("LOOPD__API_LIMITS__MAX_CONCURRENT", "4"),
            // No growing back within the test: the halving stays visible.
            ("LOOPD__API_LIMITS__RECOVER_AFTER", "100"),
        ],
    )
    .await;
    let mode = format!("provider {}", p.url());
    let config = ["reviewer=false", "model=sonnet"];
    let mut ids = Vec::new();
    for name in ["a", "b", "c"] {
        let repo = s.repo(name, 1, &mode, &config);
        ids.push(s.create(&repo, json!({})).await);
    }
    for id in &ids {
        s.wait_status(id, "COMPLETED").await;
    }
    assert!(p.counts().rate_limited >= 1, "{:?}", p.counts());
    let w = s.get_json("/workers").await;
    let acct = &w["accounts"][0];
    assert!(
        acct["account"]
            .as_str()
            .unwrap_or_default()
            .starts_with("sonnet:"),
        "{w}"
    );
    assert_eq!(acct["last_signal"], "rate_limited", "{w}");
    assert_eq!(acct["max_concurrent"], 4, "{w}");
    assert!(acct["limit"].as_i64().unwrap_or(9) <= 2, "halved: {w}");
}
