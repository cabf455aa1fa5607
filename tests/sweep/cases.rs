//! The sweep's requests: every route with every wrong-token case, bad ids, traversing names,
//! malformed, mistyped and oversized bodies, bad query strings, and random garbage — none of
//! which may succeed.

use super::Ids;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::json;

/// One request of the sweep.
pub struct Req {
    method: Method,
    path: String,
    auth: Option<String>,
    content_type: Option<&'static str>,
    body: Vec<u8>,
}

impl Req {
    fn new(method: Method, path: impl Into<String>, auth: Option<&str>) -> Req {
        Req {
            method,
            path: path.into(),
            auth: auth.map(str::to_string),
            content_type: None,
            body: Vec::new(),
        }
    }

    fn json(mut self, body: impl Into<Vec<u8>>) -> Req {
        self.content_type = Some("application/json");
        self.body = body.into();
        self
    }

    fn typed(mut self, content_type: Option<&'static str>, body: impl Into<Vec<u8>>) -> Req {
        self.content_type = content_type;
        self.body = body.into();
        self
    }

    pub fn label(&self) -> String {
        let body = String::from_utf8_lossy(&self.body[..self.body.len().min(60)]).to_string();
        format!(
            "{} {} [{}] {body}",
            self.method,
            self.path,
            self.auth
                .as_deref()
                .map(|a| &a[..a.len().min(12)])
                .unwrap_or("-")
        )
    }

    pub async fn send(
        &self,
        client: &reqwest::Client,
        base: &str,
    ) -> Result<(u16, String), String> {
        let mut r = client.request(self.method.clone(), format!("{base}{}", self.path));
        if let Some(a) = &self.auth {
            r = r.header("Authorization", a);
        }
        if let Some(ct) = self.content_type {
            r = r.header("Content-Type", ct);
        }
        let resp = r
            .body(self.body.clone())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await.map_err(|e| e.to_string())?))
    }
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// Ids that name nothing (or try to escape).
const BAD_IDS: &[&str] = &[
    "00000000-0000-7000-8000-000000000000",
    "abc",
    "..%2F..%2Fetc%2Fpasswd",
    "%00",
    "%E2%98%83",
    "1%20OR%201=1",
    "'%3B%20DROP%20TABLE%20runs%3B--",
];

/// Artifact names that must never reach the store.
const BAD_NAMES: &[&str] = &[
    "..%2F..%2Fetc%2Fpasswd",
    "%2Fetc%2Fpasswd",
    "a%2F%2Fb",
    "a%2F.%2Fb",
    "a%5Cb",
    "x%00y",
    "..",
];

/// Bodies that are not the JSON a route wants.
fn junk_bodies() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = [
        "",
        "{",
        "}",
        "null",
        "[]",
        "123",
        "\"str\"",
        "{\"a\":}",
        "{'single':1}",
        "true",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    v.push(vec![0xff, 0xfe, 0x00, 0x80]);
    v.push(format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes());
    v
}

fn random_junk(rng: &mut rand::rngs::StdRng) -> Vec<u8> {
    let len = rng.gen_range(1..200);
    if rng.gen_bool(0.5) {
        (0..len).map(|_| rng.gen::<u8>()).collect()
    } else {
        // No "hostname": `{"hostname": "x"}` is a valid registration.
        let keys = [
            "epoch",
            "status",
            "spec_path",
            "wait_ms",
            "offset",
            "content",
            "leases",
        ];
        let vals = [
            json!(null),
            json!(-1),
            json!("x"),
            json!([1]),
            json!({"a": 1}),
            json!(1e300),
            json!(true),
        ];
        let mut m = serde_json::Map::new();
        for _ in 0..rng.gen_range(1..4) {
            m.insert(
                keys[rng.gen_range(0..keys.len())].into(),
                vals[rng.gen_range(0..vals.len())].clone(),
            );
        }
        serde_json::Value::Object(m).to_string().into_bytes()
    }
}

/// Every route, with its method, a valid path for the live ids, and the token it needs.
fn routes(ids: &Ids, client: &str, join: &str) -> Vec<(Method, String, String)> {
    let (r, s, w) = (&ids.run, &ids.step, &ids.worker);
    let (c, wt) = (bearer(client), bearer(&ids.worker_token));
    vec![
        (Method::POST, "/runs".into(), c.clone()),
        (Method::GET, "/runs".into(), c.clone()),
        (Method::GET, format!("/runs/{r}"), c.clone()),
        (Method::GET, format!("/runs/{r}/steps"), c.clone()),
        (Method::POST, format!("/runs/{r}/pause"), c.clone()),
        (Method::POST, format!("/runs/{r}/resume"), c.clone()),
        (Method::POST, format!("/runs/{r}/cancel"), c.clone()),
        (Method::POST, format!("/runs/{r}/retry"), c.clone()),
        (Method::GET, format!("/runs/{r}/events"), c.clone()),
        (Method::GET, format!("/runs/{r}/output"), c.clone()),
        (Method::GET, format!("/runs/{r}/artifacts"), c.clone()),
        (Method::GET, format!("/runs/{r}/artifacts/x.log"), c.clone()),
        (Method::GET, "/workers".into(), c.clone()),
        (Method::DELETE, format!("/workers/{w}"), c.clone()),
        (Method::POST, "/workers/register".into(), bearer(join)),
        (Method::POST, format!("/workers/{w}/heartbeat"), wt.clone()),
        (Method::POST, format!("/workers/{w}/claim"), wt.clone()),
        (Method::POST, format!("/steps/{s}/output"), wt.clone()),
        (Method::POST, format!("/steps/{s}/events"), wt.clone()),
        (Method::POST, format!("/steps/{s}/complete"), wt.clone()),
        (Method::POST, format!("/steps/{s}/release"), wt.clone()),
        (
            Method::PUT,
            format!("/steps/{s}/artifacts/x.log?epoch={}", ids.epoch),
            wt.clone(),
        ),
        (
            Method::GET,
            format!("/steps/{s}/artifacts/x.log?epoch={}", ids.epoch),
            wt,
        ),
    ]
}

/// Every wrong-token case for every route (the right token is never sent here).
fn wrong_tokens(ids: &Ids, client: &str, join: &str, out: &mut Vec<Req>) {
    for (method, path, right) in routes(ids, client, join) {
        let mut wrong = vec![
            None,
            Some("Bearer ".to_string()),
            Some("Bearer nope".to_string()),
            Some("nope".to_string()),
            Some(format!("Bearer {}x", &right[7..])),
            Some(format!("Basic {}", &right[7..])),
        ];
        for candidate in [
            bearer(client),
            bearer(join),
            bearer(&ids.worker_token),
            bearer(&ids.other_token),
        ] {
            let is_right = candidate == right;
            // The other worker's token is right for /steps routes' authentication (the
            // lease check refuses it: 403), wrong for the first worker's own routes.
            if !is_right {
                wrong.push(Some(candidate));
            }
        }
        for auth in wrong {
            let body = if method == Method::POST || method == Method::PUT {
                b"{\"epoch\":1}".to_vec()
            } else {
                Vec::new()
            };
            out.push(Req::new(method.clone(), path.clone(), auth.as_deref()).json(body));
        }
    }
}

/// Bad ids and names on the client routes.
fn bad_ids(ids: &Ids, client: &str, out: &mut Vec<Req>) {
    let c = bearer(client);
    let w = bearer(&ids.worker_token);
    for id in BAD_IDS {
        for tail in [
            "",
            "/steps",
            "/events",
            "/output",
            "/artifacts",
            "/artifacts/x.log",
            "/pause",
            "/resume",
            "/cancel",
            "/retry",
        ] {
            let m = if matches!(tail, "/pause" | "/resume" | "/cancel" | "/retry") {
                Method::POST
            } else {
                Method::GET
            };
            out.push(Req::new(m, format!("/runs/{id}{tail}"), Some(&c)));
        }
        out.push(Req::new(Method::DELETE, format!("/workers/{id}"), Some(&c)));
        for tail in ["output", "events", "complete", "release"] {
            let body = json!({"epoch": ids.epoch, "offset": 0, "content": "x", "event_type": "X", "status": "succeeded", "exit_code": 0});
            out.push(
                Req::new(Method::POST, format!("/steps/{id}/{tail}"), Some(&w))
                    .json(body.to_string()),
            );
        }
        out.push(
            Req::new(
                Method::PUT,
                format!("/steps/{id}/artifacts/x?epoch={}", ids.epoch),
                Some(&w),
            )
            .typed(None, "x"),
        );
    }
    for name in BAD_NAMES {
        out.push(Req::new(
            Method::GET,
            format!("/runs/{}/artifacts/{name}", ids.run),
            Some(&c),
        ));
        let q = format!("?epoch={}", ids.epoch);
        out.push(
            Req::new(
                Method::PUT,
                format!("/steps/{}/artifacts/{name}{q}", ids.step),
                Some(&w),
            )
            .typed(None, "x"),
        );
        out.push(Req::new(
            Method::GET,
            format!("/steps/{}/artifacts/{name}{q}", ids.step),
            Some(&w),
        ));
    }
    for q in [
        "?status=bogus",
        "?status=running",
        "?status=",
        "?status=%FF",
    ] {
        out.push(Req::new(Method::GET, format!("/runs{q}"), Some(&c)));
    }
    for q in ["?offset=-1", "?offset=abc"] {
        out.push(Req::new(
            Method::GET,
            format!("/runs/{}/output{q}", ids.run),
            Some(&c),
        ));
    }
    for q in ["?after=xyz", "?after=-"] {
        out.push(Req::new(
            Method::GET,
            format!("/runs/{}/events{q}", ids.run),
            Some(&c),
        ));
    }
    for q in ["", "?epoch=", "?epoch=abc", "?epoch=1.5"] {
        out.push(
            Req::new(
                Method::PUT,
                format!("/steps/{}/artifacts/x.log{q}", ids.step),
                Some(&w),
            )
            .typed(None, "x"),
        );
    }
    // Wrong run state: the run is RUNNING.
    out.push(Req::new(
        Method::POST,
        format!("/runs/{}/resume", ids.run),
        Some(&c),
    ));
    out.push(Req::new(
        Method::POST,
        format!("/runs/{}/retry", ids.run),
        Some(&c),
    ));
    for (m, p) in [
        (Method::PATCH, "/runs".to_string()),
        (Method::GET, "/nope".into()),
        (Method::PUT, format!("/runs/{}", ids.run)),
        (Method::GET, "/steps".into()),
    ] {
        out.push(Req::new(m, p, Some(&c)));
    }
}

/// Bodies that must be refused, with the right token, for every route that takes one.
fn bad_bodies(ids: &Ids, client: &str, join: &str, out: &mut Vec<Req>) {
    let (s, w) = (&ids.step, &ids.worker);
    let stale = ids.epoch - 1;
    let wt = bearer(&ids.worker_token);
    let ot = bearer(&ids.other_token);
    let c = bearer(client);
    let j = bearer(join);
    let json_routes: Vec<(String, String)> = vec![
        ("/runs".into(), c.clone()),
        ("/workers/register".into(), j.clone()),
        (format!("/workers/{w}/heartbeat"), wt.clone()),
        (format!("/workers/{w}/claim"), wt.clone()),
        (format!("/steps/{s}/output"), wt.clone()),
        (format!("/steps/{s}/events"), wt.clone()),
        (format!("/steps/{s}/complete"), wt.clone()),
        (format!("/steps/{s}/release"), wt.clone()),
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for (path, auth) in &json_routes {
        for body in junk_bodies() {
            if path.ends_with("/claim") && body.is_empty() {
                continue; // an empty claim body is valid ("answer now")
            }
            out.push(Req::new(Method::POST, path.clone(), Some(auth)).json(body));
        }
        out.push(Req::new(Method::POST, path.clone(), Some(auth)).typed(Some("text/plain"), "{}"));
        out.push(
            Req::new(Method::POST, path.clone(), Some(auth))
                .json(format!("{{\"x\":\"{}\"}}", "a".repeat(5 << 20))),
        );
        // Any JSON object is a valid claim (unknown fields are ignored): no random ones there.
        for _ in 0..if path.ends_with("/claim") { 0 } else { 300 } {
            out.push(Req::new(Method::POST, path.clone(), Some(auth)).json(random_junk(&mut rng)));
        }
    }
    let ws = "/nonexistent/workspace";
    for body in [
        json!({"spec_path": 1, "workspace_root": ws}),
        json!({"spec_path": "specs/demo.md", "workspace_root": ws}),
        json!({"spec_path": "../../../etc/passwd", "workspace_root": "/tmp"}),
        json!({"spec_path": "specs/demo.md", "workspace_root": "/tmp", "merge_strategy": "bogus"}),
        json!({"spec_path": "x", "workspace_root": "w", "workspace_source": "git"}),
        json!({"spec_path": "x", "workspace_root": "w", "repo_url": "file:///nonexistent/repo"}),
        json!({"spec_path": "x", "workspace_root": "w", "labels": ["has space"]}),
        json!({"spec_path": "x", "workspace_root": "w", "name_source": "poem"}),
    ] {
        out.push(Req::new(Method::POST, "/runs", Some(&c)).json(body.to_string()));
    }
    let nul = "a\0b";
    for (path, body, auth) in [
        (
            "/runs".to_string(),
            json!({"spec_path": nul, "workspace_root": nul, "name": nul}).to_string(),
            &c,
        ),
        (
            "/workers/register".to_string(),
            json!({"hostname": nul, "capabilities": {}}).to_string(),
            &j,
        ),
        (
            "/workers/register".to_string(),
            json!({"hostname": "h", "capabilities": {"labels": [nul]}}).to_string(),
            &j,
        ),
    ] {
        out.push(Req::new(Method::POST, path, Some(auth)).json(body));
    }
    let o = |epoch: i64| json!({"epoch": epoch, "offset": 0, "content": "late"}).to_string();
    let e =
        |epoch: i64, t: &str| json!({"epoch": epoch, "event_type": t, "payload": {}}).to_string();
    let done = |epoch: i64, st: &str| {
        json!({"epoch": epoch, "status": st, "exit_code": 0, "output_tail": ""}).to_string()
    };
    let rel = |epoch: i64| json!({"epoch": epoch}).to_string();
    for (path, body, auth) in [
        (format!("/steps/{s}/output"), o(stale), &wt),
        (format!("/steps/{s}/output"), o(ids.epoch), &ot),
        (
            format!("/steps/{s}/output"),
            json!({"epoch": ids.epoch, "offset": 1u64 << 40, "content": "gap"}).to_string(),
            &wt,
        ),
        (format!("/steps/{s}/events"), e(stale, "AGENT_NOTE"), &wt),
        (
            format!("/steps/{s}/events"),
            e(ids.epoch, "lower_case"),
            &wt,
        ),
        (
            format!("/steps/{s}/events"),
            e(ids.epoch, "RUN_COMPLETED"),
            &wt,
        ),
        (
            format!("/steps/{s}/events"),
            e(ids.epoch, "LEASE_GRANTED"),
            &wt,
        ),
        (
            format!("/steps/{s}/complete"),
            done(stale, "succeeded"),
            &wt,
        ),
        (
            format!("/steps/{s}/complete"),
            done(ids.epoch, "bogus"),
            &wt,
        ),
        (
            format!("/steps/{s}/complete"),
            done(ids.epoch, "succeeded"),
            &ot,
        ),
        (format!("/steps/{s}/release"), rel(stale), &wt),
        (format!("/steps/{s}/release"), rel(ids.epoch), &ot),
        (
            format!("/workers/{w}/heartbeat"),
            json!({"status": "offline"}).to_string(),
            &wt,
        ),
        (
            format!("/workers/{w}/heartbeat"),
            json!({"status": "idle", "leases": "x"}).to_string(),
            &wt,
        ),
        (
            format!("/workers/{w}/claim"),
            json!({"wait_ms": 999_999}).to_string(),
            &wt,
        ),
        (
            format!("/workers/{w}/claim"),
            json!({"wait_ms": -5}).to_string(),
            &wt,
        ),
        (
            "/workers/register".to_string(),
            json!({"hostname": "", "capabilities": {}}).to_string(),
            &j,
        ),
        (
            "/workers/register".to_string(),
            json!({"hostname": "h", "capabilities": {"slots": 0}}).to_string(),
            &j,
        ),
    ] {
        out.push(Req::new(Method::POST, path, Some(auth)).json(body));
    }
    out.push(
        Req::new(
            Method::POST,
            format!("/workers/{}/claim", ids.other_worker),
            Some(&wt),
        )
        .json("{}"),
    );
    let big = vec![b'x'; 2 << 20];
    out.push(
        Req::new(
            Method::PUT,
            format!("/steps/{s}/artifacts/big.bin?epoch={}", ids.epoch),
            Some(&wt),
        )
        .typed(None, big),
    );
    out.push(
        Req::new(
            Method::PUT,
            format!("/steps/{s}/artifacts/x.log?epoch={stale}"),
            Some(&wt),
        )
        .typed(None, "x"),
    );
    out.push(Req::new(
        Method::GET,
        format!("/steps/{s}/artifacts/missing.log?epoch={}", ids.epoch),
        Some(&wt),
    ));
}

/// The whole sweep.
pub fn all(ids: &Ids, client: &str, join: &str) -> Vec<Req> {
    let mut out = Vec::new();
    wrong_tokens(ids, client, join, &mut out);
    bad_ids(ids, client, &mut out);
    bad_bodies(ids, client, join, &mut out);
    out
}
