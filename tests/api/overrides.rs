//! `config_override` and the keys that name commands or paths, on a single host. The server
//! never opens a path a request names (a FIFO would hang it, `/dev/zero` would fill its
//! memory, a secret file would be echoed in the error); it takes a JSON object or key=value
//! text. On loopback a single host accepts command overrides unless the operator turns
//! them off, and then only a token with the `exec` scope may send them.

use crate::harness::{error_of, Env, RUN_ROWS};
use crate::support::test_dir;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

fn config_of(run: &Value) -> Value {
    serde_json::from_str(run["config_json"].as_str().expect("config_json")).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_override_is_never_opened_as_a_file_on_the_server() {
    let env = Env::single("override-paths").await;
    let repo = env.repo("ws", 1, "tick");
    let secret = env.dir.path().join("secret.conf");
    std::fs::write(&secret, "root:secret-first-line:0:0\n").expect("secret");
    let fifo = env.dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let before = env.row_counts(RUN_ROWS);
    // Before: the FIFO hung a blocking thread (no answer), the secret's first line came back.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    for path in [secret.clone(), fifo.clone(), "/dev/zero".into()] {
        let body = json!({
            "spec_path": "specs/demo.md",
            "workspace_root": repo.path,
            "config_override": path,
        });
        let r = http
            .post(env.url("/runs"))
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{} got no answer: {e}", path.display()));
        let status = r.status();
        let text = r.text().await.expect("body");
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{}: {text}",
            path.display()
        );
        assert!(text.contains("reads no files"), "{text}");
        assert!(!text.contains("secret-first-line"), "{text}");
    }
    assert_eq!(
        env.row_counts(RUN_ROWS),
        before,
        "a refused request stored a run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_value_text_and_json_overrides_reach_the_run_config() {
    let env = Env::single("override-forms").await;
    let repo = env.repo("ws", 1, "hang");
    let text = env
        .create(
            &repo,
            json!({"config_override": "# from a file\nreviewer=false\niterations = 7\n"}),
        )
        .await;
    let c = config_of(&text);
    assert_eq!(
        (c["reviewer"].clone(), c["iterations"].clone()),
        (json!(false), json!(7))
    );
    let repo2 = env.repo("ws2", 1, "hang");
    let obj = env
        .create(
            &repo2,
            json!({"config_override": {"iterations": 3, "model": "sonnet"}}),
        )
        .await;
    let c = config_of(&obj);
    assert_eq!(
        (c["iterations"].clone(), c["model"].clone()),
        (json!(3), json!("sonnet"))
    );
    // 64 KiB at most.
    let big = format!("model=m\n#{}\n", "x".repeat(64 << 10));
    let r = env
        .post_json(
            "/runs",
            &json!({"spec_path": "specs/demo.md", "workspace_root": repo.path, "config_override": big}),
        )
        .await;
    let (status, code) = error_of(r).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    for id in [&text["id"], &obj["id"]] {
        env.post(&format!("/runs/{}/cancel", id.as_str().expect("id")))
            .await;
    }
}

/// A single host's config file with a plain token and an exec token, commands off.
fn exec_config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("loopd.toml");
    std::fs::write(
        &path,
        "[auth]\nallow_request_commands = false\n\
         [[auth.tokens]]\nname = \"trusted\"\ntoken = \"trusted-exec-token-01\"\nscopes = [\"submit\", \"exec\"]\n",
    )
    .expect("config");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_host_takes_command_overrides_on_loopback_unless_turned_off() {
    let open = Env::single("exec-default").await;
    let repo = open.repo("ws", 1, "hang");
    let agent = format!("sh {} tick", crate::support::fake_agent());
    let run = open
        .create(&repo, json!({"config_override": {"agent_cmd": agent}}))
        .await;
    assert_eq!(config_of(&run)["agent_cmd"], agent.as_str());
    open.post(&format!("/runs/{}/cancel", run["id"].as_str().expect("id")))
        .await;

    let cfg_dir = test_dir("exec-off-config");
    let cfg = exec_config(cfg_dir.path());
    let cfg = cfg.to_string_lossy().to_string();
    let env = Env::single_with(
        "exec-off",
        &[
            ("LOOPD_AUTH_TOKEN", "plain-submit-token-1"),
            ("LOOPD_CONFIG", &cfg),
        ],
    )
    .await;
    let repo = env.repo("ws", 1, "hang");
    let before = env.row_counts(RUN_ROWS);
    let body = json!({
        "spec_path": "specs/demo.md",
        "workspace_root": repo.path,
        "config_override": {"agent_cmd": agent, "verify_cmds": ["true"]},
    });
    let r = env.post_json("/runs", &body).await;
    let text_status = r.status();
    let text = r.text().await.expect("body");
    assert_eq!(text_status, StatusCode::FORBIDDEN, "{text}");
    let v: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(v["code"], "forbidden");
    let msg = v["error"].as_str().expect("error");
    assert!(
        msg.contains("agent_cmd") && msg.contains("verify_cmds") && msg.contains("exec"),
        "{msg}"
    );
    assert_eq!(env.row_counts(RUN_ROWS), before);
    let r = env
        .http
        .post(env.url("/runs"))
        .bearer_auth("trusted-exec-token-01")
        .json(&body)
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), StatusCode::CREATED);
    let run: Value = r.json().await.expect("JSON");
    assert_eq!(config_of(&run["run"])["agent_cmd"], agent.as_str());
    env.post(&format!(
        "/runs/{}/cancel",
        run["run"]["id"].as_str().expect("id")
    ))
    .await;
}
