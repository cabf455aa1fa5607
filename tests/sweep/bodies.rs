//! The sweep's body cases: malformed, mistyped and oversized JSON, wrong content types and
//! random garbage on every route that takes a body.

use crate::cases::{bearer, junk_bodies, random_junk, Req};
use crate::Ids;
use rand::SeedableRng;
use reqwest::Method;
use serde_json::json;

pub fn bad_bodies(ids: &Ids, client: &str, join: &str, out: &mut Vec<Req>) {
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
    run_limits(client, out);
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

/// Run requests past the limits (names, labels, workspace roots, numbers, override size,
/// override paths), and command overrides without the `exec` scope, with both the unnamed
/// client token and a submit token.
fn run_limits(client: &str, out: &mut Vec<Req>) {
    let ws = "/nonexistent/workspace";
    let base = |extra: serde_json::Value| {
        let mut v = json!({"spec_path": "specs/demo.md", "workspace_root": ws});
        v.as_object_mut()
            .and_then(|o| extra.as_object().map(|x| o.extend(x.clone())));
        v.to_string()
    };
    let labels: Vec<String> = (0..33).map(|i| format!("l{i}")).collect();
    let mut bodies = vec![
        base(json!({"name": "n".repeat(201)})),
        base(json!({"name": "line\nINFO forged"})),
        base(json!({"name": "\u{1b}[31mred"})),
        base(json!({"name": "bidi\u{202E}"})),
        base(json!({"labels": labels})),
        base(json!({"labels": ["l".repeat(65)]})),
        json!({"spec_path": "specs/demo.md", "workspace_root": "relative/ws"}).to_string(),
        base(json!({"config_override": "/etc/passwd"})),
        base(json!({"config_override": "/dev/zero"})),
        base(json!({"config_override": "/proc/self/environ"})),
        base(json!({"config_override": "a=b\nno equals sign"})),
        base(json!({"config_override": {"Bad Key": 1}})),
        base(json!({"config_override": format!("model={}", "m".repeat(70_000))})),
    ];
    for (key, value) in [
        ("iterations", json!(10_001)),
        ("claude_timeout_sec", json!(1u64 << 40)),
        ("claude_retries", json!(101)),
        ("max_consecutive_review_failures", json!(u64::MAX)),
        ("model", json!("opus; id")),
    ] {
        bodies.push(base(json!({"config_override": {key: value}})));
    }
    let c = bearer(client);
    let submit = bearer(crate::SUBMIT_TOKEN);
    for body in bodies {
        out.push(Req::new(Method::POST, "/runs", Some(&c)).json(body));
    }
    for over in [
        json!({"config_override": {"agent_cmd": "sh -c id"}}),
        json!({"config_override": "verify_cmds=id > /tmp/x"}),
        json!({"config_override": "{\"prompt_file\": \"/etc/shadow\"}"}),
        json!({"config_override": {"context_files": ["/etc/shadow"]}}),
        json!({"config_override": {"specs_dir": "/"}}),
        json!({"config_override": {"plans_dir": "/"}}),
        json!({"worktree_path_template": "/tmp/x"}),
    ] {
        for auth in [&c, &submit] {
            out.push(Req::new(Method::POST, "/runs", Some(auth)).json(base(over.clone())));
        }
    }
    let j = bearer(crate::support::pool::JOIN);
    for body in [
        json!({"hostname": "h", "instance_id": "i".repeat(129)}),
        json!({"hostname": "h", "instance_id": "has space"}),
        json!({"hostname": "h", "instance_id": "new\nline"}),
        json!({"hostname": "h", "instance_id": ""}),
        json!({"hostname": "h", "capabilities": {"labels": labels}}),
        json!({"hostname": "h", "capabilities": {"labels": ["bidi\u{202E}"]}}),
    ] {
        out.push(Req::new(Method::POST, "/workers/register", Some(&j)).json(body.to_string()));
    }
    // Valid registrations past `limits.registrations_per_minute` (the sweep's controller allows
    // two, used by the setup): 429, nothing stored.
    for i in 0..20 {
        let body =
            json!({"hostname": format!("late-{i}"), "capabilities": {"labels": ["x"], "slots": 1}});
        out.push(Req::new(Method::POST, "/workers/register", Some(&j)).json(body.to_string()));
    }
}
