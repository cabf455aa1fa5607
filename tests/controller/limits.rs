//! Issue 26: the limits on registration. Past `limits.registrations_per_minute` (per join
//! token) or `limits.max_live_workers`, `POST /workers/register` answers 429 with a JSON
//! `{"error","code"}` body and stores nothing; a malformed registration is still a 400.

use crate::harness::{answer, refused, Ctl};
use crate::support::pool::JOIN;
use serde_json::{json, Value};

/// Long leases and offline limits: the registered workers stay online through the test.
const LONG: [(&str, &str); 2] = [
    ("LOOPD__LEASE__TTL_MS", "600000"),
    ("LOOPD__LEASE__WORKER_OFFLINE_AFTER_MS", "600000"),
];

fn body(host: &str) -> Value {
    json!({"hostname": host, "capabilities": {"labels": [], "slots": 1, "version": "test"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_past_the_rate_get_429_and_store_nothing() {
    // Two a minute: a burst of two, then one every 30 s.
    let mut env = LONG.to_vec();
    env.push(("LOOPD__LIMITS__REGISTRATIONS_PER_MINUTE", "2"));
    let ctl = Ctl::start("ctl-reg-rate", &env).await;
    for host in ["a", "b"] {
        let (status, v) = ctl.register(&body(host), JOIN).await;
        assert_eq!(status, 201, "{v}");
    }
    let before = ctl.snapshot();
    let third = ctl.register(&body("c"), JOIN).await;
    refused(&third, 429, "too_many_registrations");
    // Still checked for what it is first: malformed is 400, a wrong token 401.
    refused(
        &ctl.register(&json!({"hostname": ""}), JOIN).await,
        400,
        "invalid_request",
    );
    refused(
        &ctl.register(&body("d"), "not-the-join-token").await,
        401,
        "unauthorized",
    );
    assert_eq!(
        ctl.snapshot(),
        before,
        "a refused registration stored something"
    );
    let (status, v) = answer(ctl.client.get(ctl.url("/workers"))).await;
    assert_eq!(status, 200);
    assert_eq!(v["workers"].as_array().map(Vec::len), Some(2), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_past_the_live_worker_limit_get_429_until_one_leaves() {
    let mut env = LONG.to_vec();
    env.extend([
        ("LOOPD__LIMITS__MAX_LIVE_WORKERS", "2"),
        ("LOOPD__LIMITS__REGISTRATIONS_PER_MINUTE", "0"),
    ]);
    let ctl = Ctl::start("ctl-live-cap", &env).await;
    let a = ctl.worker("a", &[]).await;
    ctl.worker("b", &[]).await;
    let before = ctl.snapshot();
    for host in ["c", "d"] {
        refused(
            &ctl.register(&body(host), JOIN).await,
            429,
            "too_many_workers",
        );
    }
    assert_eq!(
        ctl.snapshot(),
        before,
        "a refused registration stored something"
    );

    // A revoked worker is not live: its place is free again.
    let (status, _) = answer(ctl.client.delete(ctl.url(&format!("/workers/{}", a.id)))).await;
    assert_eq!(status, 204);
    let (status, v) = ctl.register(&body("c"), JOIN).await;
    assert_eq!(status, 201, "{v}");
    refused(
        &ctl.register(&body("d"), JOIN).await,
        429,
        "too_many_workers",
    );
}
