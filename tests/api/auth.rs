//! The client token: every runs-API route but /health, /ready and /metrics needs it;
//! `Bearer <token>` and the bare token both work; authentication comes before body parsing.

use crate::harness::{error_of, Env, RUN_ROWS};
use reqwest::{Method, StatusCode};
use serde_json::json;

const TOKEN: &str = "tok-9f3a7c1e55d2";

/// Every runs-API route (method, path) for run `id`.
fn routes(id: &str) -> Vec<(Method, String)> {
    let mut v = vec![
        (Method::GET, "/runs".to_string()),
        (Method::POST, "/runs".to_string()),
        (Method::GET, "/workers".to_string()),
        (Method::GET, "/worktrees?workspace=/tmp".to_string()),
        (
            Method::DELETE,
            "/worktrees?workspace=/tmp&path=/tmp/x".to_string(),
        ),
    ];
    for p in [
        "",
        "/steps",
        "/events",
        "/output",
        "/artifacts",
        "/artifacts/report.tsv",
        "/diff",
    ] {
        v.push((Method::GET, format!("/runs/{id}{p}")));
    }
    for verb in [
        "pause",
        "resume",
        "cancel",
        "retry",
        "scrap",
        "merge",
        "create-pr",
        "reset",
    ] {
        v.push((Method::POST, format!("/runs/{id}/{verb}")));
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_the_token_and_accepts_bearer_or_bare() {
    let env = Env::single_with("auth", &[("LOOPD_AUTH_TOKEN", TOKEN)]).await;
    // A failed run changes no more: whatever changes now, a request did.
    let repo = env.repo("ws", 1, "fail");
    let run = env.create(&repo, json!({})).await;
    let id = run["id"].as_str().expect("id").to_string();
    let failed = env.wait_status(&id, "FAILED").await;
    let before = env.row_counts(RUN_ROWS);

    for (method, path) in routes(&id) {
        for header in [
            None,
            Some("Bearer wrong"),
            Some("wrong"),
            Some("Bearer "),
            Some("Basic dG9rOg=="),
        ] {
            let mut r = env.http.request(method.clone(), env.url(&path));
            if let Some(h) = header {
                r = r.header("Authorization", h);
            }
            let (status, code) = error_of(r.send().await.expect("send")).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {header:?}"
            );
            assert_eq!(code, "unauthorized");
        }
    }
    // Reads with either form of the right token.
    for header in [
        format!("Bearer {TOKEN}"),
        format!("bearer  {TOKEN}"),
        TOKEN.to_string(),
    ] {
        for path in [
            "/runs".to_string(),
            format!("/runs/{id}"),
            format!("/runs/{id}/steps"),
        ] {
            let r = env
                .http
                .get(env.url(&path))
                .header("Authorization", &header)
                .send()
                .await
                .expect("GET");
            assert_eq!(r.status(), StatusCode::OK, "{path} with {header}");
        }
    }
    assert_eq!(env.row_counts(RUN_ROWS), before);
    assert_eq!(env.get_json(&format!("/runs/{id}")).await["run"], failed);
    // A bare-token client can also change things.
    let r = env
        .http
        .post(env.url(&format!("/runs/{id}/retry")))
        .header("Authorization", TOKEN)
        .send()
        .await
        .expect("retry");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_request_gets_401_even_when_its_body_is_also_bad() {
    let env = Env::single_with("auth-first", &[("LOOPD_AUTH_TOKEN", TOKEN)]).await;
    let before = env.row_counts(RUN_ROWS);
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("application/json", b"{\"spec_path\": ".to_vec()),
        ("application/json", b"{}".to_vec()),
        ("text/plain", b"hello".to_vec()),
        ("application/json", vec![b' '; (1 << 20) + 100]),
    ];
    for (ct, body) in bodies {
        let len = body.len();
        let r = env
            .http
            .post(env.url("/runs"))
            .header("content-type", ct)
            .body(body)
            .send()
            .await
            .expect("POST");
        let (status, _) = error_of(r).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{ct}, {len} bytes");
    }
    let r = env
        .http
        .get(env.url("/runs?status=runnin"))
        .send()
        .await
        .expect("GET");
    let (status, _) = error_of(r).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "bad query, no token");
    let r = env
        .http
        .get(env.url("/runs/not-a-uuid"))
        .send()
        .await
        .expect("GET");
    let (status, _) = error_of(r).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "malformed id, no token");
    assert_eq!(env.row_counts(RUN_ROWS), before);
    // With the token, the same malformed body is a 400.
    let r = env
        .req(Method::POST, "/runs")
        .header("content-type", "application/json")
        .body("{\"spec_path\": ")
        .send()
        .await
        .expect("POST");
    let (status, _) = error_of(r).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
