//! Starting the daemon: a controller on a fresh Postgres database (settings as in
//! `config/controller.toml`) becomes ready and serves the runs API; invalid settings stop the
//! process with one clear line and a non-zero exit; secrets never reach the log.

use crate::harness::{error_of, Env};
use crate::support::pg::TestDb;
use crate::support::proc::{bin, Loopd};
use crate::support::repo::Repo;
use crate::support::test_dir;
use crate::wire::assert_run_shape;
use nix::sys::signal::Signal;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

fn config_file(name: &str) -> String {
    format!("{}/config/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_on_a_fresh_postgres_database_becomes_ready_and_serves_runs() {
    let db = TestDb::create();
    let dir = test_dir("controller-pg");
    let cfg = config_file("controller.toml");
    let daemon = Loopd::spawn(
        &dir.path().join("data"),
        &["--config", &cfg],
        &[
            ("LOOPD__STORAGE__URL", &db.url),
            ("LOOPD_AUTH_TOKEN", "ctl-token-1-abcdef"),
            ("LOOPD_WORKER_JOIN_TOKEN", "join-token-1-abcdef"),
        ],
    );
    daemon.wait_ready("/ready").await;
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", daemon.url());
    let r = http.get(url("/ready")).send().await.expect("ready");
    assert_eq!(
        r.json::<Value>().await.expect("JSON"),
        json!({"status": "ready"})
    );

    let repo = Repo::create(dir.path(), "ws", 1, "tick", &[]);
    let r = http
        .post(url("/runs"))
        .bearer_auth("ctl-token-1-abcdef")
        .json(&json!({"spec_path": "specs/demo.md", "plan_path": "PLAN.md", "workspace_root": repo.path}))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.expect("JSON");
    assert_run_shape(&created["run"]);
    let id = created["run"]["id"].as_str().expect("id");
    let got: Value = http
        .get(url(&format!("/runs/{id}")))
        .bearer_auth("ctl-token-1-abcdef")
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    assert_run_shape(&got["run"]);
    let text = http
        .get(url("/runs"))
        .bearer_auth("ctl-token-1-abcdef")
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("text");
    let runs: crate::loopctl::RunsResponse = crate::loopctl::parse(&text);
    assert_eq!(runs.runs.len(), 1);
    // Malformed ids are 404s on Postgres too (a NUL byte is not even valid text there).
    for bad in ["not-a-uuid", "%00", "x%27%3B--"] {
        for path in [
            format!("/runs/{bad}"),
            format!("/runs/{bad}/steps"),
            format!("/runs/{bad}/cancel"),
        ] {
            let mut req = http.get(url(&path));
            if path.ends_with("/cancel") {
                req = http.post(url(&path));
            }
            let r = req
                .bearer_auth("ctl-token-1-abcdef")
                .send()
                .await
                .expect("send");
            let (status, _) = error_of(r).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        }
    }
    let (status, _) = error_of(
        http.get(url("/runs?status=runnin"))
            .bearer_auth("ctl-token-1-abcdef")
            .send()
            .await
            .expect("GET"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    output_chunks_keep_their_own_larger_cap(&http, &daemon.url()).await;
    let log = daemon.log_text();
    for secret in ["ctl-token-1-abcdef", "join-token-1-abcdef"] {
        assert!(!log.contains(secret), "the log shows {secret}:\n{log}");
    }
}

/// Runs `loopd <args>` with a clean environment plus `env`, expecting it to refuse to start.
fn refused_start(args: &[&str], env: &[(&str, &str)]) -> String {
    let dir = test_dir("refused");
    let out = Command::new(bin())
        .args(args)
        .arg("--data-dir")
        .arg(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .envs(env.iter().copied())
        .output()
        .expect("run loopd");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "loopd {args:?} started with invalid settings: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one clear line, got:\n{stderr}");
    lines[0].to_string()
}

#[test]
fn invalid_settings_stop_the_process_with_one_clear_line() {
    let dir = test_dir("bad-config");
    let bad_toml = dir.path().join("bad.toml");
    std::fs::write(&bad_toml, "role = \"single\"\n[storage\n").expect("file");
    let unknown_key = dir.path().join("unknown.toml");
    std::fs::write(&unknown_key, "role = \"single\"\nbnid = \"x\"\n").expect("file");
    let bad_role = dir.path().join("role.toml");
    std::fs::write(&bad_role, "role = \"boss\"\n").expect("file");
    let missing = dir.path().join("missing.toml");
    let missing_s = missing.to_string_lossy().to_string();
    let a_dir = dir.path().to_string_lossy().to_string();
    // (arguments, environment, words the error line must contain)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (vec!["--role", "boss"], vec![], vec!["boss"]),
        (vec![], vec![("LOOPD__ROLE", "boss")], vec!["boss"]),
        (
            vec!["--config", bad_role.to_str().unwrap_or_default()],
            vec![],
            vec!["boss"],
        ),
        (
            vec!["--role", "worker"],
            vec![("LOOPD_WORKER_JOIN_TOKEN", "j")],
            vec!["controller"],
        ),
        (
            vec!["--role", "controller"],
            vec![("LOOPD__STORAGE__TYPE", "postgres")],
            vec!["storage.url"],
        ),
        (vec!["--config", &missing_s], vec![], vec!["missing.toml"]),
        (vec!["--config", &a_dir], vec![], vec!["config file"]),
        (
            vec![],
            vec![("LOOPD_CONFIG", &missing_s)],
            vec!["missing.toml"],
        ),
        (
            vec!["--config", bad_toml.to_str().unwrap_or_default()],
            vec![],
            vec!["bad.toml"],
        ),
        (
            vec!["--config", unknown_key.to_str().unwrap_or_default()],
            vec![],
            vec!["bnid"],
        ),
        (vec!["--bind", "nowhere"], vec![], vec!["bind"]),
        (
            vec!["--bind", "0.0.0.0:7700"],
            vec![],
            vec!["beyond loopback", "allow_unauthenticated"],
        ),
        (
            vec!["--role", "controller", "--bind", "192.0.2.1:7700"],
            vec![
                ("LOOPD__STORAGE__TYPE", "postgres"),
                ("LOOPD__STORAGE__URL", "postgres://x@127.0.0.1:1/x"),
            ],
            vec!["beyond loopback", "auth.token_file"],
        ),
        (
            vec![],
            vec![("LOOPD_AUTH_TOKEN", "too-short")],
            vec!["at least 16"],
        ),
        (
            vec![],
            vec![("LOOPD__AUTH__TOKEN_FILE", "/nonexistent/token")],
            vec!["/nonexistent/token"],
        ),
    ];
    for (args, env, words) in cases {
        let line = refused_start(&args, &env);
        for w in words {
            assert!(
                line.contains(w),
                "loopd {args:?} {env:?}: {line:?} does not mention {w}"
            );
        }
    }
}

#[test]
fn a_refused_start_does_not_print_the_secrets_it_was_given() {
    let line = refused_start(
        &["--role", "controller"],
        &[
            ("LOOPD__STORAGE__TYPE", "postgres"),
            ("LOOPD__STORAGE__URL", ""),
            ("LOOPD_AUTH_TOKEN", "sekrit-auth-42-abcd"),
            ("LOOPD__STORAGE__POOL_SIZE", "zero"),
        ],
    );
    assert!(!line.contains("sekrit-auth-42-abcd"), "{line}");
    let line = refused_start(
        &["--role", "controller"],
        &[
            ("LOOPD__STORAGE__TYPE", "postgres"),
            (
                "LOOPD__STORAGE__URL",
                "postgres://postgres:pw-sekrit-77@127.0.0.1:1/loopd",
            ),
        ],
    );
    assert!(!line.contains("pw-sekrit-77"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_token_never_appears_in_the_daemon_log() {
    const SECRET: &str = "very-secret-token-5b1e";
    let mut env = Env::single_with(
        "secret-log",
        &[("LOOPD_AUTH_TOKEN", SECRET), ("RUST_LOG", "debug")],
    )
    .await;
    let repo = env.repo("ws", 1, "tick");
    let run = env.create(&repo, json!({})).await;
    let id = run["id"].as_str().expect("id").to_string();
    env.wait_status(&id, "COMPLETED").await;
    // Wrong tokens are not echoed either.
    let r = env
        .http
        .get(env.url("/runs"))
        .header("Authorization", format!("Bearer {SECRET}-x"))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    env.daemon.signal(Signal::SIGTERM);
    let status = env.daemon.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "a SIGTERM stop is clean: {status}");
    let log = env.daemon.log_text();
    assert!(log.contains("DEBUG"), "debug logging is on: {log}");
    assert!(!log.contains(SECRET), "the log shows the token:\n{log}");
}

/// Worker output chunks may exceed the 1 MiB JSON cap (up to `limits.output_chunk_bytes`, 4 MiB);
/// other worker JSON bodies may not.
async fn output_chunks_keep_their_own_larger_cap(http: &reqwest::Client, base: &str) {
    let r = http
        .post(format!("{base}/workers/register"))
        .bearer_auth("join-token-1-abcdef")
        .json(&json!({"hostname": "cap-test", "capabilities": {"labels": [], "slots": 1, "version": "t"}}))
        .send()
        .await
        .expect("register");
    assert_eq!(r.status(), StatusCode::CREATED);
    let reg: Value = r.json().await.expect("JSON");
    let (wid, token) = (
        reg["worker_id"].as_str().expect("worker_id"),
        reg["token"].as_str().expect("token"),
    );
    let step = uuid::Uuid::now_v7();
    let chunk =
        |mb: usize| json!({"epoch": 1, "offset": 0, "content": "x".repeat(mb << 20)}).to_string();
    let post = |path: String, ct: &'static str, body: String| {
        http.post(format!("{base}{path}"))
            .bearer_auth(token)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let out = format!("/steps/{step}/output");
    let (status, _) = error_of(
        post(out.clone(), "application/json", chunk(2))
            .await
            .expect("post"),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a 2 MiB chunk is read (the step is unknown)"
    );
    let (status, _) = error_of(
        post(out.clone(), "application/json", chunk(5))
            .await
            .expect("post"),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, _) = error_of(
        post(out.clone(), "text/plain", chunk(0))
            .await
            .expect("post"),
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (status, _) = error_of(
        post(out, "application/json", "{".into())
            .await
            .expect("post"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let beat = json!({"status": "idle", "metrics": {"pad": "x".repeat(2 << 20)}, "leases": []});
    let (status, _) = error_of(
        post(
            format!("/workers/{wid}/heartbeat"),
            "application/json",
            beat.to_string(),
        )
        .await
        .expect("post"),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "other JSON bodies: 1 MiB"
    );
}
