//! The review routes' request handling: an empty body is the defaults, anything else must be
//! JSON of the right shape; unknown runs are 404, runs in the wrong status 409, runs without
//! a worktree 400 — each with the JSON error shape, and none changes anything.

use crate::harness::{error_of, Env};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_review_requests_are_refused_with_json_errors_and_change_nothing() {
    let env = Env::single("review-errors").await;
    let none = "00000000-0000-7000-8000-000000000000";
    for (m, p) in [
        (Method::GET, "diff"),
        (Method::POST, "scrap"),
        (Method::POST, "merge"),
        (Method::POST, "create-pr"),
    ] {
        let r = env
            .req(m.clone(), &format!("/runs/{none}/{p}"))
            .send()
            .await
            .expect("send");
        assert_eq!(
            error_of(r).await,
            (StatusCode::NOT_FOUND, "not_found".into()),
            "{p}"
        );
    }

    let repo = env.repo("ws", 1, "tick");
    let run = env.create(&repo, json!({})).await;
    let id = run["id"].as_str().expect("id").to_string();
    let done = env.wait_status(&id, "COMPLETED").await;
    let main = repo.git(&["rev-parse", "main"]);
    let bodies: Vec<(&str, &str, &str, StatusCode, &str)> = vec![
        (
            "merge",
            "text/plain",
            "squash",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "merge",
            "application/json",
            "{\"strategy\": ",
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "merge",
            "application/json",
            "{\"strategy\": 3}",
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "merge",
            "application/json",
            "{\"strategy\": \"rebase\"}",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "create-pr",
            "application/json",
            "[]",
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "create-pr",
            "text/plain",
            "x",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
    ];
    for (route, ct, body, status, code) in bodies {
        let r = env
            .req(Method::POST, &format!("/runs/{id}/{route}"))
            .header("content-type", ct)
            .body(body)
            .send()
            .await
            .expect("POST");
        assert_eq!(
            error_of(r).await,
            (status, code.to_string()),
            "{route} {body}"
        );
    }
    let big = vec![b' '; (1 << 20) + 10];
    let mut big = big;
    big[0] = b'{';
    let r = env
        .req(Method::POST, &format!("/runs/{id}/merge"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .expect("POST");
    assert_eq!(error_of(r).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(repo.git(&["rev-parse", "main"]), main, "nothing merged");
    assert_eq!(env.get_json(&format!("/runs/{id}")).await["run"], done);

    // An empty JSON object, and whitespace, are the defaults too.
    let r = env
        .req(Method::POST, &format!("/runs/{id}/merge"))
        .header("content-type", "application/json")
        .body(" \n")
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_routes_check_the_status_and_the_worktree() {
    let env = Env::single("review-status").await;
    // A run whose worktree could not be made fails without one.
    let repo = env.repo("ws", 1, "tick");
    let run = env
        .create(&repo, json!({"base_branch": "no-such-branch"}))
        .await;
    let id = run["id"].as_str().expect("id").to_string();
    let failed = env.wait_status(&id, "FAILED").await;
    assert!(failed["worktree"].is_null(), "{failed}");
    for (m, p) in [(Method::GET, "diff"), (Method::POST, "scrap")] {
        let r = env
            .req(m, &format!("/runs/{id}/{p}"))
            .send()
            .await
            .expect("send");
        assert_eq!(
            error_of(r).await,
            (StatusCode::BAD_REQUEST, "no_worktree".into()),
            "{p}"
        );
    }
    // merge and create-pr need a COMPLETED run.
    for p in ["merge", "create-pr"] {
        let r = env.post(&format!("/runs/{id}/{p}")).await;
        assert_eq!(
            error_of(r).await,
            (StatusCode::CONFLICT, "invalid_transition".into()),
            "{p}"
        );
    }
    assert_eq!(env.get_json(&format!("/runs/{id}")).await["run"], failed);
}
