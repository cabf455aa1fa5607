//! The sweep's requests: every route with every wrong-token case, bad ids, traversing names,
//! malformed, mistyped and oversized bodies, bad query strings, and random garbage — none of
//! which may succeed.

use super::Ids;
use rand::Rng;
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
    pub(crate) fn new(method: Method, path: impl Into<String>, auth: Option<&str>) -> Req {
        Req {
            method,
            path: path.into(),
            auth: auth.map(str::to_string),
            content_type: None,
            body: Vec::new(),
        }
    }

    pub(crate) fn json(mut self, body: impl Into<Vec<u8>>) -> Req {
        self.content_type = Some("application/json");
        self.body = body.into();
        self
    }

    pub(crate) fn typed(
        mut self,
        content_type: Option<&'static str>,
        body: impl Into<Vec<u8>>,
    ) -> Req {
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

pub(crate) fn bearer(t: &str) -> String {
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
    "report%E2%80%AEgol.txt",
    "a%E2%81%A6b",
    "lossy%EF%BF%BD.log",
    "new%0Aline",
];

/// Bodies that are not the JSON a route wants.
pub(crate) fn junk_bodies() -> Vec<Vec<u8>> {
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

pub(crate) fn random_junk(rng: &mut rand::rngs::StdRng) -> Vec<u8> {
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

/// Client tokens without the route's scope: the read-only token on every write route, the
/// submit token on the admin route. Both are 403, with the live ids.
fn scoped_tokens(ids: &Ids, out: &mut Vec<Req>) {
    let (r, w) = (&ids.run, &ids.worker);
    let read = bearer(crate::READ_TOKEN);
    let submit = bearer(crate::SUBMIT_TOKEN);
    let mut writes = vec![(Method::POST, "/runs".to_string())];
    for verb in ["pause", "resume", "cancel", "retry"] {
        writes.push((Method::POST, format!("/runs/{r}/{verb}")));
    }
    writes.push((Method::DELETE, format!("/workers/{w}")));
    for (m, p) in writes {
        for body in ["", "{}", "{\"spec_path\":\"x\",\"workspace_root\":\"/x\"}"] {
            out.push(Req::new(m.clone(), p.clone(), Some(&read)).json(body));
        }
    }
    out.push(Req::new(
        Method::DELETE,
        format!("/workers/{w}"),
        Some(&submit),
    ));
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
    for q in ["?status=bogus", "?status=runnin", "?status=", "?status=%FF"] {
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
/// The whole sweep.
pub fn all(ids: &Ids, client: &str, join: &str) -> Vec<Req> {
    let mut out = Vec::new();
    wrong_tokens(ids, client, join, &mut out);
    scoped_tokens(ids, &mut out);
    bad_ids(ids, client, &mut out);
    crate::bodies::bad_bodies(ids, client, join, &mut out);
    out
}
