//! Refused worker requests: 401 without a valid token of the right kind, 403 for another
//! worker's id or step, 404 for unknown ids, 409 stale_lease for an old epoch, 413 for huge
//! bodies, 400 for malformed ones — each with a JSON `{"error","code"}` body, and each leaving
//! the database and the held output exactly as they were.

use crate::harness::{answer, refused, Answer, Ctl, Lease, Worker, CLIENT};
use crate::support::pool::JOIN;
use reqwest::Method;
use serde_json::{json, Value};

const UNKNOWN: &str = "01900000-0000-7000-8000-000000000000";

/// The worker routes, as (method, path, JSON body) for the lease `l` of worker `w`.
fn routes(w: &Worker, l: &Lease) -> Vec<(Method, String, Value)> {
    let e = l.epoch;
    vec![
        (
            Method::POST,
            format!("/workers/{}/heartbeat", w.id),
            json!({"status": "busy", "leases": [{"step_id": l.step, "epoch": e}]}),
        ),
        (
            Method::POST,
            format!("/workers/{}/claim", w.id),
            json!({"wait_ms": 0}),
        ),
        (
            Method::POST,
            format!("/steps/{}/output", l.step),
            json!({"epoch": e, "offset": 0, "content": "x"}),
        ),
        (
            Method::POST,
            format!("/steps/{}/events", l.step),
            json!({"epoch": e, "event_type": "NOTE"}),
        ),
        (
            Method::PUT,
            format!("/steps/{}/artifacts/a.txt?epoch={e}", l.step),
            json!("raw"),
        ),
        (
            Method::POST,
            format!("/steps/{}/complete", l.step),
            Worker::completion(l),
        ),
        (
            Method::POST,
            format!("/steps/{}/release", l.step),
            json!({"epoch": e}),
        ),
    ]
}

struct Checker<'a> {
    ctl: &'a Ctl,
    lease: &'a Lease,
    checked: usize,
}

impl Checker<'_> {
    /// Sends `req`, expects `status`/`code`, and checks that nothing changed.
    async fn expect(&mut self, what: &str, req: reqwest::RequestBuilder, status: u16, code: &str) {
        let (before, out) = (self.ctl.snapshot(), self.out());
        let a: Answer = answer(req).await;
        assert_eq!(a.0, status, "{what}: expected {status} {code}, got {a:?}");
        refused(&a, status, code);
        assert_eq!(self.ctl.snapshot(), before, "{what}: the database changed");
        assert_eq!(self.out(), out, "{what}: the held output changed");
        self.checked += 1;
    }

    fn out(&self) -> u64 {
        self.ctl.output_size(&self.lease.run, &self.lease.step)
    }
}

fn with_body(r: reqwest::RequestBuilder, body: &Value) -> reqwest::RequestBuilder {
    match body {
        Value::String(s) => r.body(s.clone()),
        v => r.json(v),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_worker_requests_get_json_errors_and_change_nothing() {
    let ctl = Ctl::start(
        "ctl-rejects",
        &[
            ("LOOPD__LEASE__TTL_MS", "600000"),
            ("LOOPD__LEASE__WORKER_OFFLINE_AFTER_MS", "600000"),
            ("LOOPD__LIMITS__ARTIFACT_BYTES", "65536"),
            ("LOOPD__LIMITS__OUTPUT_CHUNK_BYTES", "65536"),
        ],
    )
    .await;
    let a = ctl.worker("a", &[]).await;
    let b = ctl.worker("b", &[]).await;
    let revoked = ctl.worker("r", &[]).await;
    let run = ctl.submit("rejects", 2, &[]).await;
    let (lease, _) = a.take().await;
    assert_eq!(a.output(&lease, 0, "some output\n").await.0, 202);
    assert_eq!(a.artifact(&lease, "kept.txt", b"kept").await.0, 201);
    let (status, _) = answer(
        ctl.client
            .delete(ctl.url(&format!("/workers/{}", revoked.id))),
    )
    .await;
    assert_eq!(status, 204, "revoke");
    let mut c = Checker {
        ctl: &ctl,
        lease: &lease,
        checked: 0,
    };
    let bare = |m: Method, p: &str| ctl.bare.request(m, ctl.url(p));

    // 401: no token, a wrong one, a revoked one, the client token, the join token.
    for (m, path, body) in routes(&a, &lease) {
        let wrong = format!("{}.{}", a.id, "0".repeat(64));
        for (who, token) in [
            ("no token", None),
            ("garbage", Some("garbage")),
            ("wrong secret", Some(wrong.as_str())),
            ("revoked", Some(revoked.token.as_str())),
            ("client token", Some(CLIENT)),
            ("join token", Some(JOIN)),
        ] {
            let mut r = with_body(bare(m.clone(), &path), &body);
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            c.expect(&format!("{m} {path} with {who}"), r, 401, "unauthorized")
                .await;
        }
    }
    // The revoked worker's own routes are closed too, whatever it sends.
    let (rl, _) = (
        Lease {
            step: lease.step.clone(),
            run: run.clone(),
            epoch: 1,
        },
        (),
    );
    for (m, path, body) in routes(&revoked, &rl).into_iter().take(2) {
        let r = with_body(revoked.req(m.clone(), &path), &body);
        c.expect(&format!("revoked {m} {path}"), r, 401, "unauthorized")
            .await;
    }
    // A worker token on the runs API and on the client's worker routes; the join token needs
    // the join token.
    for (m, path) in [
        (Method::GET, "/runs".to_string()),
        (Method::GET, format!("/runs/{run}/steps")),
        (Method::POST, format!("/runs/{run}/cancel")),
        (Method::GET, "/workers".to_string()),
        (Method::DELETE, format!("/workers/{}", b.id)),
    ] {
        let r = a.req(m.clone(), &path);
        c.expect(
            &format!("worker token on {m} {path}"),
            r,
            401,
            "unauthorized",
        )
        .await;
    }
    let reg = json!({"hostname": "h", "capabilities": {"labels": [], "slots": 1, "version": "t"}});
    for token in [a.token.as_str(), CLIENT, "garbage"] {
        let r = bare(Method::POST, "/workers/register")
            .bearer_auth(token)
            .json(&reg);
        c.expect("register without the join token", r, 401, "unauthorized")
            .await;
    }

    // 403: another worker's id in the path; another worker's step at its live epoch.
    for (m, path, body) in routes(&a, &lease).into_iter().take(2) {
        let r = with_body(b.req(m.clone(), &path), &body);
        c.expect(&format!("b on {path}"), r, 403, "forbidden").await;
    }
    for (m, path, body) in routes(&a, &lease).into_iter().skip(2) {
        let r = with_body(b.req(m.clone(), &path), &body);
        c.expect(
            &format!("b writes a's step: {m} {path}"),
            r,
            403,
            "forbidden",
        )
        .await;
    }

    // 404: unknown and malformed ids.
    for id in [UNKNOWN, "not-a-uuid"] {
        let ghost = Lease {
            step: id.into(),
            run: run.clone(),
            epoch: lease.epoch,
        };
        for (m, path, body) in routes(&a, &ghost).into_iter().skip(2) {
            let r = with_body(a.req(m.clone(), &path), &body);
            c.expect(&format!("unknown step {m} {path}"), r, 404, "not_found")
                .await;
        }
        let r = ctl.client.delete(ctl.url(&format!("/workers/{id}")));
        c.expect("revoke an unknown worker", r, 404, "not_found")
            .await;
    }

    // 409 stale_lease: an old (or future) epoch.
    for epoch in [lease.epoch - 1, lease.epoch + 1] {
        let old = Lease {
            epoch,
            ..lease.clone()
        };
        for (m, path, body) in routes(&a, &old).into_iter().skip(2) {
            let r = with_body(a.req(m.clone(), &path), &body);
            c.expect(&format!("epoch {epoch}: {m} {path}"), r, 409, "stale_lease")
                .await;
        }
    }

    // 413: bodies over their caps.
    let big_json = json!({"status": "busy", "metrics": {"pad": "x".repeat(2 << 20)}});
    let hb = format!("/workers/{}/heartbeat", a.id);
    c.expect(
        "huge heartbeat",
        a.req(Method::POST, &hb).json(&big_json),
        413,
        "payload_too_large",
    )
    .await;
    let mut done = Worker::completion(&lease);
    done["output_tail"] = json!("y".repeat(2 << 20));
    let path = format!("/steps/{}/complete", lease.step);
    c.expect(
        "huge completion",
        a.req(Method::POST, &path).json(&done),
        413,
        "payload_too_large",
    )
    .await;
    let chunk = json!({"epoch": lease.epoch, "offset": 12, "content": "z".repeat(70_000)});
    let path = format!("/steps/{}/output", lease.step);
    c.expect(
        "huge output chunk",
        a.req(Method::POST, &path).json(&chunk),
        413,
        "payload_too_large",
    )
    .await;
    let path = format!(
        "/steps/{}/artifacts/big.bin?epoch={}",
        lease.step, lease.epoch
    );
    c.expect(
        "huge artifact",
        a.req(Method::PUT, &path).body(vec![7u8; 70_000]),
        413,
        "payload_too_large",
    )
    .await;

    // 400: malformed JSON, wrong types, missing fields, values out of range.
    let json_routes: Vec<(Method, String, Value)> = routes(&a, &lease)
        .into_iter()
        .filter(|(m, _, _)| *m == Method::POST)
        .collect();
    for (m, path, _) in &json_routes {
        for raw in ["{", "{\"epoch\": }", "[1,2", "nul"] {
            let r = a
                .req(m.clone(), path)
                .header("Content-Type", "application/json")
                .body(raw);
            c.expect(&format!("malformed {path}: {raw}"), r, 400, "invalid_json")
                .await;
        }
        let typed = json!({"epoch": "one", "offset": -1, "content": 5, "status": 7, "wait_ms": "soon",
                           "leases": "all", "event_type": [], "exit_code": "zero"});
        let r = a.req(m.clone(), path).json(&typed);
        c.expect(&format!("wrong types on {path}"), r, 400, "invalid_json")
            .await;
    }
    for (what, path, body, code) in [
        (
            "claim over 30 s",
            format!("/workers/{}/claim", a.id),
            json!({"wait_ms": 30001}),
            "invalid_request",
        ),
        (
            "unknown worker status",
            hb.clone(),
            json!({"status": "sleeping"}),
            "invalid_json",
        ),
        (
            "offline status",
            hb.clone(),
            json!({"status": "offline"}),
            "invalid_request",
        ),
        (
            "reserved event type",
            format!("/steps/{}/events", lease.step),
            json!({"epoch": lease.epoch, "event_type": "LEASE_GRANTED"}),
            "invalid_request",
        ),
        (
            "lowercase event type",
            format!("/steps/{}/events", lease.step),
            json!({"epoch": lease.epoch, "event_type": "note"}),
            "invalid_request",
        ),
        (
            "completion without status",
            format!("/steps/{}/complete", lease.step),
            json!({"epoch": lease.epoch}),
            "invalid_json",
        ),
        (
            "register without hostname",
            "/workers/register".into(),
            json!({"capabilities": {}}),
            "invalid_json",
        ),
        (
            "register with 0 slots",
            "/workers/register".into(),
            json!({"hostname": "h", "capabilities": {"slots": 0}}),
            "invalid_request",
        ),
    ] {
        let r = if path == "/workers/register" {
            bare(Method::POST, &path).bearer_auth(JOIN).json(&body)
        } else {
            a.req(Method::POST, &path).json(&body)
        };
        c.expect(what, r, 400, code).await;
    }
    let path = format!(
        "/steps/{}/artifacts/..%2Fescape.txt?epoch={}",
        lease.step, lease.epoch
    );
    c.expect(
        "artifact name with ..",
        a.req(Method::PUT, &path).body("x"),
        400,
        "invalid_request",
    )
    .await;
    let path = format!("/steps/{}/artifacts/a.txt?epoch=first", lease.step);
    c.expect(
        "artifact epoch not a number",
        a.req(Method::PUT, &path).body("x"),
        400,
        "invalid_query",
    )
    .await;
    let path = format!("/steps/{}/events", lease.step);
    let r = a
        .req(Method::POST, &path)
        .header("Content-Type", "text/plain")
        .body("{}");
    c.expect("events as text/plain", r, 415, "unsupported_media_type")
        .await;

    assert!(c.checked > 120, "only {} refusals checked", c.checked);
    // After all that, the lease is intact and the worker can still finish its step.
    let (status, hb) = a.heartbeat("busy", &[&lease]).await;
    assert_eq!(
        (status, hb["leases"][0]["action"].as_str()),
        (200, Some("continue"))
    );
    assert_eq!(a.complete(&lease, &Worker::completion(&lease)).await.0, 200);
    let log = ctl.proc.log_text();
    for t in [&a.token, &b.token, &revoked.token] {
        assert!(!log.contains(t.as_str()), "a worker token reached the log");
    }
    assert!(
        !log.contains(CLIENT) && !log.contains(JOIN),
        "a token reached the log"
    );
}
