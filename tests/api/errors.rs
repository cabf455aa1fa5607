//! Refused requests: every 4xx has a JSON body `{"error","code"}` with the right status, and a
//! refused request changes nothing (no run, no event in the SQLite file).

use crate::harness::{error_of, Env, RUN_ROWS};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Runs and events held by the daemon.
fn stored(env: &Env) -> Vec<i64> {
    env.row_counts(RUN_ROWS)
}

async fn post_raw(
    env: &Env,
    path: &str,
    ct: &str,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, String) {
    let r = env
        .req(Method::POST, path)
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .expect("POST");
    error_of(r).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_create_requests_are_400_and_store_nothing() {
    let env = Env::single("bad-create").await;
    let repo = env.repo("ws", 1, "tick");
    let plain = env.dir.path().join("plain");
    std::fs::create_dir_all(plain.join("specs")).expect("dir");
    std::fs::write(plain.join("specs/demo.md"), "# spec\n").expect("spec");
    std::fs::write(env.dir.path().join("outside.md"), "# outside\n").expect("outside");
    let ws = repo.path.to_string_lossy().to_string();
    std::os::unix::fs::symlink(
        env.dir.path().join("outside.md"),
        repo.path.join("escape.md"),
    )
    .expect("symlink");
    let before = stored(&env);
    assert_eq!(before[0], 0);

    let json_cases: Vec<(&str, &str)> = vec![
        ("malformed JSON", "{\"spec_path\": "),
        ("not an object", "[1, 2]"),
        ("missing fields", "{}"),
        (
            "missing workspace_root",
            "{\"spec_path\": \"specs/demo.md\"}",
        ),
    ];
    for (what, body) in json_cases {
        let (status, _) = post_raw(&env, "/runs", "application/json", body.to_string()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}");
    }

    let value_cases: Vec<(&str, Value)> = vec![
        (
            "spec_path of the wrong type",
            json!({"spec_path": 5, "workspace_root": ws}),
        ),
        (
            "labels of the wrong type",
            json!({"spec_path": "specs/demo.md", "workspace_root": ws, "labels": "gpu"}),
        ),
        (
            "unknown merge_strategy",
            json!({"spec_path": "specs/demo.md", "workspace_root": ws, "merge_strategy": "rebase"}),
        ),
        (
            "spec outside workspace_root",
            json!({"spec_path": "../outside.md", "workspace_root": ws}),
        ),
        (
            "plan outside workspace_root",
            json!({"spec_path": "specs/demo.md", "plan_path": "../outside.md", "workspace_root": ws}),
        ),
        (
            "absolute spec outside workspace_root",
            json!({"spec_path": env.dir.path().join("outside.md"), "workspace_root": ws}),
        ),
        (
            "spec symlinked outside workspace_root",
            json!({"spec_path": "escape.md", "workspace_root": ws}),
        ),
        (
            "nonexistent workspace",
            json!({"spec_path": "specs/demo.md", "workspace_root": env.dir.path().join("nope")}),
        ),
        (
            "empty workspace_root",
            json!({"spec_path": "specs/demo.md", "workspace_root": ""}),
        ),
        (
            "spec missing",
            json!({"spec_path": "specs/missing.md", "workspace_root": ws}),
        ),
        (
            "plan missing",
            json!({"spec_path": "specs/demo.md", "plan_path": "NOPE.md", "workspace_root": ws}),
        ),
        (
            "workspace not a git repository",
            json!({"spec_path": "specs/demo.md", "workspace_root": plain}),
        ),
        (
            "invalid label",
            json!({"spec_path": "specs/demo.md", "workspace_root": ws, "labels": ["no spaces"]}),
        ),
        (
            "empty label",
            json!({"spec_path": "specs/demo.md", "workspace_root": ws, "labels": [""]}),
        ),
        (
            "config_override that is not JSON",
            json!({"spec_path": "specs/demo.md", "workspace_root": ws, "config_override": "{nope"}),
        ),
        (
            "config_override naming a file (the server reads none)",
            json!({"spec_path": "specs/demo.md", "workspace_root": ws, "config_override": "/nonexistent/config"}),
        ),
        (
            "name longer than 200 characters",
            json!({"spec_path": "specs/demo.md", "workspace_root": ws, "name": "n".repeat(201)}),
        ),
        (
            "name with a newline",
            json!({"spec_path": "specs/demo.md", "workspace_root": ws, "name": "ok\nINFO forged"}),
        ),
        (
            "name with an escape sequence",
            json!({"spec_path": "specs/demo.md", "workspace_root": ws, "name": "\u{1b}[2Jboom"}),
        ),
        (
            "relative workspace_root",
            json!({"spec_path": "specs/demo.md", "workspace_root": "ws"}),
        ),
        (
            "33 labels",
            json!({"spec_path": "specs/demo.md", "workspace_root": ws,
                   "labels": (0..33).map(|i| format!("l{i}")).collect::<Vec<_>>()}),
        ),
        (
            "a 65-character label",
            json!({"spec_path": "specs/demo.md", "workspace_root": ws, "labels": ["l".repeat(65)]}),
        ),
        (
            "iterations past its bound",
            json!({"spec_path": "specs/demo.md", "workspace_root": ws, "config_override": {"iterations": 10_001}}),
        ),
        (
            "a timeout of 2^40 seconds",
            json!({"spec_path": "specs/demo.md", "workspace_root": ws, "config_override": "claude_timeout_sec=1099511627776"}),
        ),
        (
            "a model name that is a shell fragment",
            json!({"spec_path": "specs/demo.md", "workspace_root": ws, "config_override": {"model": "x; id"}}),
        ),
        (
            "git run without repo_url",
            json!({"spec_path": "specs/demo.md", "workspace_root": "label", "workspace_source": "git"}),
        ),
    ];
    for (what, body) in value_cases {
        let r = env.post_json("/runs", &body).await;
        let (status, code) = error_of(r).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}");
        assert!(!code.is_empty(), "{what}");
    }
    assert_eq!(stored(&env), before, "refused requests stored something");
    let v = env.get_json("/runs").await;
    assert_eq!(v, json!({"runs": []}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_content_type_is_415_and_oversized_bodies_are_413() {
    let env = Env::single("body-limits").await;
    let repo = env.repo("ws", 1, "tick");
    let ws = repo.path.to_string_lossy().to_string();
    let body = json!({"spec_path": "specs/demo.md", "workspace_root": ws}).to_string();
    let before = stored(&env);

    let (status, _) = post_raw(&env, "/runs", "text/plain", body.clone()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (status, _) = post_raw(&env, "/runs", "application/x-www-form-urlencoded", body).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = env
        .req(Method::POST, "/runs")
        .body("{}")
        .send()
        .await
        .expect("POST");
    let (status, _) = error_of(r).await;
    assert_eq!(
        status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "no content type"
    );

    // A valid request, just over 1 MiB: refused for its size alone.
    let big = json!({
        "spec_path": "specs/demo.md",
        "workspace_root": ws,
        "name": "x".repeat((1 << 20) + 16),
    })
    .to_string();
    let (status, code) = post_raw(&env, "/runs", "application/json", big.clone()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{code}");
    // The same without a Content-Length (chunked): still 413.
    let stream = futures_util::stream::iter(
        big.into_bytes()
            .chunks(64 * 1024)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let r = env
        .req(Method::POST, "/runs")
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("POST");
    let (status, _) = error_of(r).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "chunked");
    assert_eq!(stored(&env), before);

    // A body under the cap is fine.
    let ok = json!({"spec_path": "specs/demo.md", "workspace_root": ws, "name": "x".repeat(200)});
    assert_eq!(
        env.post_json("/runs", &ok).await.status(),
        StatusCode::CREATED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_query_strings_are_400() {
    let env = Env::single("bad-query").await;
    for path in ["/runs?status=runnin", "/runs?status=DONE", "/runs?status="] {
        let (status, code) = error_of(env.get(path).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(code, "invalid_query", "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_malformed_ids_and_routes_are_404() {
    let env = Env::single("not-found").await;
    let unknown = uuid::Uuid::now_v7().to_string();
    for id in [unknown.as_str(), "not-a-uuid", "%00", "..", "a%2Fb"] {
        for path in [
            format!("/runs/{id}"),
            format!("/runs/{id}/steps"),
            format!("/runs/{id}/artifacts"),
            format!("/runs/{id}/artifacts/report.tsv"),
            format!("/runs/{id}/events"),
            format!("/runs/{id}/output"),
        ] {
            let (status, code) = error_of(env.get(&path).await).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "GET {path}");
            assert_eq!(code, "not_found", "GET {path}");
        }
        for verb in ["pause", "resume", "cancel", "retry"] {
            let path = format!("/runs/{id}/{verb}");
            let (status, _) = error_of(env.post(&path).await).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "POST {path}");
        }
    }
    for path in ["/nope", "/runs/x/y/z/w", "/v1/runs"] {
        let (status, code) = error_of(env.get(path).await).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(code, "not_found");
    }
    // An unknown artifact of a known run, and names that try to escape.
    let repo = env.repo("ws", 1, "hang");
    let run = env.create(&repo, json!({})).await;
    let id = run["id"].as_str().expect("id");
    for name in ["nope.txt", "..%2F..%2Floopd.db", "%2Fetc%2Fpasswd"] {
        let (status, _) = error_of(env.get(&format!("/runs/{id}/artifacts/{name}")).await).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{name}");
    }
    let r = env.post(&format!("/runs/{id}/cancel")).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_method_is_a_json_error() {
    let env = Env::single("method").await;
    let r = env
        .req(Method::DELETE, "/runs")
        .send()
        .await
        .expect("DELETE");
    let (status, _) = error_of(r).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}
