//! What goes wrong is one `error: …` line and exit status 1: no daemon, no token, an unknown run.

use crate::support::repo::Repo;
use crate::support::{self, test_dir};
use crate::{client, Env};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_is_not_running_is_one_error_line() {
    let dir = test_dir("cli-down");
    let addr = format!("http://127.0.0.1:{}", support::free_port());
    for args in [
        vec!["list"],
        vec!["inspect", "0190d4c4-0000-7000-8000-000000000000"],
        vec!["run", "specs/demo.md"],
        vec!["tail", "x"],
    ] {
        let out = client(
            &addr,
            dir.path(),
            &args,
            &[("LOOPD_READY_TIMEOUT_MS", "300")],
        )
        .await;
        let line = out.error_line();
        assert_eq!(
            line,
            format!("error: daemon not running at {addr}"),
            "{args:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_and_not_found_are_one_error_line() {
    let env = Env::start("cli-auth", &[("LOOPD_AUTH_TOKEN", "cli-token-3-abcdef")]).await;
    let repo = Repo::create(env.dir.path(), "ws", 1, "tick", &[]);
    let unknown = "0190d4c4-0000-7000-8000-000000000000";
    for args in [
        vec!["list"],
        vec!["inspect", unknown],
        vec!["run", "specs/demo.md", "PLAN.md"],
        vec!["cancel", unknown],
    ] {
        let line = env.client(&repo.path, &args).await.error_line();
        assert_eq!(
            line, "error: unauthorized: check LOOPD_TOKEN env var or --token flag",
            "{args:?}"
        );
        let line = env
            .client_with(&repo.path, &args, &[("LOOPD_TOKEN", "wrong")])
            .await
            .error_line();
        assert!(line.starts_with("error: unauthorized"), "{args:?}: {line}");
    }
    let token = [("LOOPD_TOKEN", "cli-token-3-abcdef")];
    for args in [
        vec!["inspect", unknown],
        vec!["inspect", "not-a-run"],
        vec!["cancel", unknown],
        vec!["artifacts", unknown],
        vec!["tail", unknown],
    ] {
        let line = env
            .client_with(&repo.path, &args, &token)
            .await
            .error_line();
        assert_eq!(line, "error: run not found", "{args:?}");
    }
    // With the token (env or flag) everything works.
    let out = env.client_with(&repo.path, &["list"], &token).await;
    assert_eq!(out.ok().trim(), "No runs found.");
    let out = env
        .client(
            &repo.path,
            &["list", "--token", "cli-token-3-abcdef", "--json"],
        )
        .await;
    assert_eq!(out.json(), json!({"runs": []}));
    // A refused submission says why.
    let line = env
        .client_with(&repo.path, &["run", "specs/missing.md"], &token)
        .await
        .error_line();
    assert!(line.contains("spec_path not found"), "{line}");
}
