//! `GET /runs` with its filters: `status`, `workspace_root` (however the directory is named),
//! both together; newest first.

use crate::harness::Env;
use crate::loopctl;
use crate::wire::assert_run_shape;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_by_status_and_workspace_root_newest_first() {
    let env = Env::single("list").await;
    let hanging = env.repo("hanging", 1, "hang");
    let ticking = env.repo("ticking", 1, "tick");
    let a = env.create(&hanging, json!({})).await;
    let a_id = a["id"].as_str().expect("id").to_string();
    env.wait_status(&a_id, "RUNNING").await;
    let b = env.create(&ticking, json!({})).await;
    let b_id = b["id"].as_str().expect("id").to_string();
    env.wait_status(&b_id, "COMPLETED").await;

    let ids = |v: &Value| -> Vec<String> {
        v["runs"]
            .as_array()
            .expect("{\"runs\": [...]}")
            .iter()
            .map(|r| r["id"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let text = env.get("/runs").await.text().await.expect("body");
    let typed: loopctl::RunsResponse = loopctl::parse(&text);
    assert_eq!(typed.runs.len(), 2);
    let all: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(ids(&all), [b_id.clone(), a_id.clone()], "newest first");
    for r in all["runs"].as_array().into_iter().flatten() {
        assert_run_shape(r);
    }

    let v = env.get_json("/runs?status=RUNNING").await;
    assert_eq!(ids(&v), [a_id.as_str()]);
    // Any letter case, as the upstream daemon (and its dashboard) send it.
    for q in ["running", "Running"] {
        let v = env.get_json(&format!("/runs?status={q}")).await;
        assert_eq!(ids(&v), [a_id.as_str()], "status={q}");
    }
    let v = env.get_json("/runs?status=COMPLETED").await;
    assert_eq!(ids(&v), [b_id.as_str()]);
    let v = env.get_json("/runs?status=FAILED").await;
    assert_eq!(ids(&v), Vec::<String>::new());

    let ws = hanging.path.canonicalize().expect("canonical");
    let q = |s: &str| -> String { url::form_urlencoded::byte_serialize(s.as_bytes()).collect() };
    let ws_q = q(&ws.to_string_lossy());
    let v = env.get_json(&format!("/runs?workspace_root={ws_q}")).await;
    assert_eq!(ids(&v), [a_id.as_str()]);
    let v = env
        .get_json(&format!("/runs?workspace_root={ws_q}&status=COMPLETED"))
        .await;
    assert_eq!(ids(&v), Vec::<String>::new());
    let v = env
        .get_json(&format!("/runs?workspace_root={ws_q}&status=RUNNING"))
        .await;
    assert_eq!(ids(&v), [a_id.as_str()]);
    // The same directory named another way.
    let link = env.dir.path().join("link-to-hanging");
    std::os::unix::fs::symlink(&ws, &link).expect("symlink");
    for other in [
        format!("{}/", ws.display()),
        link.to_string_lossy().to_string(),
        format!("{}/../hanging", ws.display()),
    ] {
        let v = env
            .get_json(&format!("/runs?workspace_root={}", q(&other)))
            .await;
        assert_eq!(ids(&v), [a_id.as_str()], "{other}");
    }
    let v = env.get_json("/runs?workspace_root=hanging").await;
    assert_eq!(ids(&v), Vec::<String>::new(), "a relative name is a label");
    let r = env
        .req(Method::POST, &format!("/runs/{a_id}/cancel"))
        .send()
        .await
        .expect("cancel");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
}
