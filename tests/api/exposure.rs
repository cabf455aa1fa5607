//! Who can reach the runs API. A daemon that binds anything but loopback refuses to start
//! without a client token, unless the operator sets `auth.allow_unauthenticated`, and then
//! it says so loudly at every start. Tokens may come from files, so they are in neither
//! argv nor the environment.

use crate::harness::{error_of, Env};
use crate::support::proc::Loopd;
use crate::support::{test_dir, wait_for, TestDir};
use reqwest::StatusCode;
use std::time::Duration;

/// Whether this machine lets the tests make a network namespace (`unshare -n`).
fn namespaces_allowed() -> bool {
    let ok = std::process::Command::new("unshare")
        .args(["-n", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: unshare -n is not allowed on this machine");
    }
    ok
}

/// Starts `loopd --role single` bound to 0.0.0.0 inside a fresh network namespace (nothing
/// outside can reach it) and waits for its log to say `started` or for it to exit.
async fn start_wide(name: &str, env: &[(&str, &str)]) -> (TestDir, Loopd, String) {
    let dir = test_dir(name);
    let mut d = Loopd::spawn_custom(
        &dir.path().join("data"),
        "0.0.0.0",
        7700,
        &["unshare", "-n"],
        &["--role", "single"],
        env,
    );
    let log = wait_for(
        "the daemon to start or stop",
        Duration::from_secs(30),
        || {
            let text = d.log_text();
            let exited = d
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            let done = exited || text.contains("loopd started");
            async move { done.then_some(text) }
        },
    )
    .await;
    (dir, d, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_beyond_loopback_without_a_token_refuses_to_start() {
    if !namespaces_allowed() {
        return;
    }
    let (_dir, mut d, log) = start_wide("wide-refused", &[]).await;
    assert!(!log.contains("loopd started"), "{log}");
    assert!(
        log.contains("beyond loopback") && log.contains("allow_unauthenticated"),
        "{log}"
    );
    let status = d.wait_exit(Duration::from_secs(10)).await;
    assert!(!status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicitly_open_daemon_beyond_loopback_starts_and_warns_loudly() {
    if !namespaces_allowed() {
        return;
    }
    let (_dir, _d, log) = start_wide(
        "wide-open",
        &[("LOOPD__AUTH__ALLOW_UNAUTHENTICATED", "true")],
    )
    .await;
    assert!(log.contains("loopd started"), "{log}");
    let warning = log
        .lines()
        .find(|l| l.contains("UNAUTHENTICATED RUNS API"))
        .unwrap_or_else(|| panic!("no warning in {log}"));
    assert!(
        warning.contains("WARN") && warning.contains("0.0.0.0:7700"),
        "{warning}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_beyond_loopback_starts_with_a_token_from_a_file() {
    if !namespaces_allowed() {
        return;
    }
    let secrets = test_dir("wide-token-file");
    let file = secrets.path().join("token");
    std::fs::write(&file, "token-from-a-file-01\n").expect("token file");
    let path = file.to_string_lossy().to_string();
    let (_dir, _d, log) = start_wide("wide-token", &[("LOOPD__AUTH__TOKEN_FILE", &path)]).await;
    assert!(log.contains("loopd started"), "{log}");
    assert!(!log.contains("UNAUTHENTICATED"), "{log}");
    assert!(!log.contains("token-from-a-file-01"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_read_from_files_guard_the_api() {
    let secrets = test_dir("token-files");
    let client = secrets.path().join("client");
    std::fs::write(&client, "client-token-in-file\n").expect("file");
    let config = secrets.path().join("loopd.toml");
    let dash = secrets.path().join("dashboard");
    std::fs::write(&dash, "dashboard-token-file\n").expect("file");
    std::fs::write(
        &config,
        format!(
            "[auth]\ntoken_file = \"{}\"\n[[auth.tokens]]\nname = \"dash\"\ntoken_file = \"{}\"\nscopes = [\"read\"]\n",
            client.display(),
            dash.display()
        ),
    )
    .expect("config");
    let cfg = config.to_string_lossy().to_string();
    let env = Env::single_with("token-files", &[("LOOPD_CONFIG", &cfg)]).await;
    let get = |token: Option<&'static str>| {
        let r = env.http.get(env.url("/runs"));
        match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    };
    let (status, _) = error_of(get(None).send().await.expect("GET")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for t in ["client-token-in-file", "dashboard-token-file"] {
        let r = get(Some(t)).send().await.expect("GET");
        assert_eq!(r.status(), StatusCode::OK, "{t}");
    }
    // The dashboard's token reads and does nothing else.
    let r = env
        .http
        .post(env.url("/runs"))
        .bearer_auth("dashboard-token-file")
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("POST");
    let (status, code) = error_of(r).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
}
