//! The postmortem on a controller with a worker: its three steps of phase `postmortem` are
//! claimed by the worker although the run has ended, and their logs are artifacts. A
//! shared_fs run also gets its reports in the workspace; a git run (whose workspace is a label)
//! has them as the steps' log artifacts only.

use crate::cluster::{path_str, Cluster, Timings};
use crate::support::repo::Repo;
use serde_json::{json, Value};

/// Posts the postmortem of `id`; its answer, which must be a 200.
async fn postmortem(c: &Cluster, id: &str) -> Value {
    let resp = c.post(&format!("/runs/{id}/postmortem"), json!({})).await;
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.expect("JSON body");
    assert_eq!(status, 200, "{v}");
    v
}

/// The run's postmortem steps ran on the cluster's worker, and their logs are artifacts.
async fn ran_on_the_worker(c: &Cluster, id: &str) {
    let steps = c.steps(id).await;
    let pm: Vec<&Value> = steps
        .iter()
        .filter(|s| s["phase"] == "postmortem")
        .collect();
    assert_eq!(pm.len(), 3, "{steps:?}");
    for s in &pm {
        assert_eq!(s["status"], "SUCCEEDED", "{s}");
        let index = c.index_of(s["worker_id"].as_str().expect("worker")).await;
        assert_eq!(index, 0, "ran on the worker: {s}");
    }
    let names: Vec<String> = c
        .artifacts(id)
        .await
        .iter()
        .map(|a| a["name"].as_str().unwrap_or_default().to_string())
        .collect();
    for n in [
        "iter-01-postmortem.log",
        "iter-02-postmortem.log",
        "iter-03-postmortem.log",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} in {names:?}");
    }
    let summary = String::from_utf8(c.download(id, "iter-03-postmortem.log").await).expect("text");
    assert!(
        summary.starts_with("# Postmortem: summary") && summary.contains("## Report: run-quality"),
        "{summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postmortem_steps_of_ended_runs_run_on_a_worker() {
    let c = Cluster::start("postmortem", 1, Timings::default()).await;
    let repo = Repo::create(c.dir.path(), "ws", 1, "tick", &[]);
    let id = c
        .submit(json!({
            "spec_path": "specs/demo.md",
            "plan_path": "PLAN.md",
            "workspace_root": path_str(&repo.path),
        }))
        .await;
    c.wait_status(&id, "COMPLETED").await;
    let v = postmortem(&c, &id).await;
    assert_eq!(v["status"], "ok", "{v}");
    let report = v["reports"]["spec_compliance"]
        .as_str()
        .expect("a report path");
    let text = std::fs::read_to_string(report).expect("report");
    assert!(text.starts_with("# Postmortem: spec-compliance"), "{text}");
    ran_on_the_worker(&c, &id).await;
    assert_eq!(c.run(&id).await["status"], "COMPLETED");

    let origin = Repo::create(c.dir.path(), "origin", 1, "tick", &[]);
    let gid = c.submit_git(&origin, &[]).await;
    c.wait_status(&gid, "COMPLETED").await;
    let v = postmortem(&c, &gid).await;
    assert_eq!(v["status"], "ok", "{v}");
    assert_eq!(
        v["analysis_dir"],
        Value::Null,
        "a git run's workspace is a label"
    );
    ran_on_the_worker(&c, &gid).await;
    let steps = c.steps(&gid).await;
    let last = steps.last().expect("steps");
    assert_eq!(last["phase"], "postmortem");
}
