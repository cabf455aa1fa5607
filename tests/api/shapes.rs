//! Success answers of every runs-API route, in exactly the shapes API.md §1 gives, and parsed by
//! the old loopctl's strict types.

use crate::harness::Env;
use crate::loopctl;
use crate::wire::{assert_run_shape, assert_step_shape, assert_utc, one_of};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_and_metrics_answer_without_a_token() {
    let env = Env::single_with("health", &[("LOOPD_AUTH_TOKEN", "s3cret-health-0001")]).await;
    for (path, body) in [
        ("/health", json!({"status": "ok"})),
        ("/ready", json!({"status": "ready"})),
    ] {
        let r = env.http.get(env.url(path)).send().await.expect("GET");
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(r.json::<Value>().await.expect("JSON"), body, "{path}");
    }
    let r = env.http.get(env.url("/metrics")).send().await.expect("GET");
    assert_eq!(r.status(), StatusCode::OK);
    let ct = r.headers()["content-type"].to_str().unwrap_or_default();
    assert!(ct.starts_with("text/plain"), "{ct}");
    let text = r.text().await.expect("text");
    for name in [
        "loopd_workers_online",
        "loopd_lease_expired_total",
        "loopd_step_retry_total",
        "loopd_steps_total",
        "loopd_runs",
        "loopd_claim_wait_seconds",
        "loopd_step_dispatch_seconds",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("# TYPE {name} "))),
            "/metrics lacks {name}:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_run_has_every_key_and_an_old_client_parses_it() {
    let env = Env::single("create-shape").await;
    let repo = env.repo("ws", 1, "hang");
    let r = env
        .post_json(
            "/runs",
            &json!({
                "spec_path": "specs/demo.md",
                "plan_path": "PLAN.md",
                "workspace_root": repo.path,
                "labels": ["linux-x86_64", "big.box"],
                "some_future_field": {"ignored": true},
            }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let text = r.text().await.expect("body");
    let created: loopctl::RunResponse = loopctl::parse(&text);
    assert_eq!(created.run.status, loopctl::RunStatus::Pending);
    assert_eq!(created.run.name_source, loopctl::RunNameSource::SpecSlug);
    let v: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(
        v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["run".to_string()]),
        "the envelope is {{\"run\": …}}"
    );
    let run = &v["run"];
    assert_run_shape(run);
    let root = repo.path.canonicalize().expect("canonical root");
    assert_eq!(run["workspace_root"], root.to_string_lossy().as_ref());
    assert_eq!(
        run["spec_path"],
        root.join("specs/demo.md").to_string_lossy().as_ref()
    );
    assert_eq!(
        run["plan_path"],
        root.join("PLAN.md").to_string_lossy().as_ref()
    );
    assert_eq!(run["name"], "demo");
    assert_eq!(
        run["labels"],
        json!(["big.box", "linux-x86_64"]),
        "a set, sorted"
    );
    assert_eq!(run["workspace_source"], "shared_fs");
    assert_eq!(run["artifact_store"], "fs");
    // No worker offers those labels: the run says so.
    let labelled = run["id"].as_str().expect("id").to_string();
    let what = "a waiting_reason naming the missing label";
    let waiting = crate::support::wait_for(what, crate::harness::STATE_TIMEOUT, || async {
        let r = env.get_json(&format!("/runs/{labelled}")).await["run"].clone();
        r["waiting_reason"]
            .as_str()
            .is_some_and(|w| w.contains("linux-x86_64"))
            .then_some(r)
    })
    .await;
    assert_run_shape(&waiting);
    let r = env.post(&format!("/runs/{labelled}/cancel")).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    let r = env
        .post_json(
            "/runs",
            &json!({"spec_path": "specs/demo.md", "plan_path": "PLAN.md", "workspace_root": repo.path}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let run: Value = r.json::<Value>().await.expect("JSON")["run"].clone();
    let id = run["id"].as_str().expect("id");
    let running = env.wait_status(id, "RUNNING").await;
    assert_run_shape(&running);
    // The worktree exists once the first step runs.
    env.wait_step_in_progress(id).await;
    let text = env
        .get(&format!("/runs/{id}"))
        .await
        .text()
        .await
        .expect("body");
    let got: loopctl::RunResponse = loopctl::parse(&text);
    assert_eq!(got.run.id, id);
    let wt = got
        .run
        .worktree
        .expect("a running shared_fs run has a worktree");
    assert_eq!(wt.provider, loopctl::WorktreeProvider::Git);
    assert!(std::path::Path::new(&wt.worktree_path).is_dir());

    let text = env
        .get(&format!("/runs/{id}/steps"))
        .await
        .text()
        .await
        .expect("body");
    let steps: loopctl::StepsResponse = loopctl::parse(&text);
    assert_eq!(steps.steps[0].phase, loopctl::StepPhase::Implementation);
    assert_eq!(steps.steps[0].status, loopctl::StepStatus::InProgress);
    let v: Value = serde_json::from_str(&text).expect("JSON");
    let step = &v["steps"][0];
    assert_step_shape(step);
    assert_eq!(step["run_id"], id);
    assert!(step["worker_id"].is_string(), "the local worker holds it");
    assert!(step["lease_epoch"].as_i64().is_some_and(|e| e >= 1));
    assert_utc(&step["lease_expires_at"], "lease_expires_at");
}

/// A completed one-task run, with its id.
async fn completed_run(env: &Env) -> (crate::support::repo::Repo, String) {
    let repo = env.repo("ws", 1, "tick");
    let run = env.create(&repo, json!({})).await;
    let id = run["id"].as_str().expect("id").to_string();
    env.wait_status(&id, "COMPLETED").await;
    (repo, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_run_lists_its_steps_in_order_and_its_artifacts() {
    let env = Env::single("completed-shape").await;
    let (_repo, id) = completed_run(&env).await;

    let text = env
        .get(&format!("/runs/{id}"))
        .await
        .text()
        .await
        .expect("body");
    let run: loopctl::RunResponse = loopctl::parse(&text);
    assert_eq!(run.run.status, loopctl::RunStatus::Completed);
    let v: Value = serde_json::from_str(&text).expect("JSON");
    assert_run_shape(&v["run"]);

    let text = env
        .get(&format!("/runs/{id}/steps"))
        .await
        .text()
        .await
        .expect("body");
    let typed: loopctl::StepsResponse = loopctl::parse(&text);
    let phases: Vec<_> = typed.steps.iter().map(|s| &s.phase).collect();
    assert_eq!(
        phases.first(),
        Some(&&loopctl::StepPhase::Implementation),
        "{text}"
    );
    assert!(typed
        .steps
        .iter()
        .all(|s| s.status == loopctl::StepStatus::Succeeded));
    let v: Value = serde_json::from_str(&text).expect("JSON");
    let steps = v["steps"].as_array().expect("steps");
    assert!(steps.len() >= 2, "implementation, then more: {text}");
    let mut last = String::new();
    for s in steps {
        assert_step_shape(s);
        let started = s["started_at"].as_str().expect("started").to_string();
        assert!(started >= last, "steps are in execution order: {text}");
        last = started;
        assert_utc(&s["ended_at"], "ended_at");
        assert_eq!(s["exit_code"], 0);
    }

    let v = env.get_json(&format!("/runs/{id}/artifacts")).await;
    let list = v["artifacts"].as_array().expect("{\"artifacts\": [...]}");
    let names: Vec<&str> = list.iter().filter_map(|a| a["name"].as_str()).collect();
    assert!(names.contains(&"report.tsv"), "{v}");
    for a in list {
        for k in ["name", "kind", "step_id", "size", "sha256", "created_at"] {
            assert!(a.get(k).is_some(), "artifact lacks {k}: {a}");
        }
        assert_utc(&a["created_at"], "artifact created_at");
    }
    let report = list
        .iter()
        .find(|a| a["name"] == "report.tsv")
        .expect("report");
    let r = env.get(&format!("/runs/{id}/artifacts/report.tsv")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let bytes = r.bytes().await.expect("bytes");
    assert_eq!(bytes.len() as u64, report["size"].as_u64().unwrap_or(0));
    assert_eq!(hex::encode(Sha256::digest(&bytes)), report["sha256"]);
    // Artifacts of steps have nested names.
    if let Some(nested) = names.iter().find(|n| n.contains('/')) {
        let r = env.get(&format!("/runs/{id}/artifacts/{nested}")).await;
        assert_eq!(r.status(), StatusCode::OK, "{nested}");
    }
    // Each step's scratch directory is gone once its results are in.
    let scratch = env.daemon.data_dir.join("work").join("steps");
    let left: Vec<_> = std::fs::read_dir(&scratch)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "step directories left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_replays_the_agent_output_and_ends_with_the_run() {
    let env = Env::single("output").await;
    let (_repo, id) = completed_run(&env).await;
    // The run has ended: the stream replays everything and closes.
    let r = env.get(&format!("/runs/{id}/output")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let ct = r.headers()["content-type"].to_str().unwrap_or_default();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let body = tokio::time::timeout(std::time::Duration::from_secs(20), r.text())
        .await
        .expect("the output stream of an ended run closes")
        .expect("body");
    let mut text = String::new();
    let mut frames = Vec::new();
    for frame in body.split("\n\n").filter(|f| f.contains("event: output")) {
        let data = frame
            .lines()
            .find_map(|l| l.strip_prefix("data:"))
            .expect("data line");
        let f: loopctl::OutputEvent = loopctl::parse(data.trim());
        text.push_str(&f.content);
        frames.push(f);
    }
    assert!(text.contains("Worked on: task number 1"), "{body}");
    // Resuming at an offset gives exactly the rest.
    let total: usize = frames.iter().map(|f| f.content.len()).sum();
    let cut = total / 2;
    let r = env.get(&format!("/runs/{id}/output?offset={cut}")).await;
    let rest = r.text().await.expect("body");
    let mut tail = String::new();
    for frame in rest.split("\n\n").filter(|f| f.contains("event: output")) {
        let data = frame.lines().find_map(|l| l.strip_prefix("data:"));
        let f: loopctl::OutputEvent = loopctl::parse(data.unwrap_or_default().trim());
        tail.push_str(&f.content);
    }
    assert_eq!(tail.as_bytes(), &text.as_bytes()[cut..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_lists_the_local_runner() {
    let env = Env::single("workers").await;
    let v = env.get_json("/workers").await;
    let list = v["workers"].as_array().expect("{\"workers\": [...]}");
    assert_eq!(list.len(), 1, "{v}");
    let w = &list[0];
    for k in [
        "id",
        "hostname",
        "status",
        "labels",
        "slots",
        "version",
        "registered_at",
        "last_heartbeat_at",
        "leases",
    ] {
        assert!(w.get(k).is_some(), "worker lacks {k}: {w}");
    }
    one_of(&w["status"], &["idle", "busy", "draining"], "worker status");
    assert_utc(&w["registered_at"], "registered_at");
}
