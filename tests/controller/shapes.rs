//! Every worker route answered with its documented shape (API.md §2), and the effect of each
//! success seen in the database: output held, events and artifacts stored, completion once.

use crate::harness::{Ctl, Worker};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const LONG: &[(&str, &str)] = &[
    ("LOOPD__LEASE__TTL_MS", "600000"),
    ("LOOPD__LEASE__WORKER_OFFLINE_AFTER_MS", "600000"),
];

fn rfc3339(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_route_answers_with_its_documented_shape() {
    let ctl = Ctl::start("ctl-shapes", LONG).await;

    // Register: 201 {worker_id, token, heartbeat_interval_ms, lease_ttl_ms}.
    let body =
        json!({"hostname": "h1", "capabilities": {"labels": ["x"], "slots": 2, "version": "9"}});
    let (status, r) = ctl.register(&body, crate::support::pool::JOIN).await;
    assert_eq!(status, 201, "{r}");
    assert!(uuid::Uuid::parse_str(r["worker_id"].as_str().unwrap()).is_ok());
    assert!(r["token"].as_str().is_some_and(|t| t.len() > 32));
    assert_eq!(r["heartbeat_interval_ms"], 300);
    assert_eq!(r["lease_ttl_ms"], 600000);
    let (_, again) = ctl.register(&body, crate::support::pool::JOIN).await;
    assert_ne!(
        again["worker_id"], r["worker_id"],
        "worker ids are never reused"
    );

    let w = ctl.worker("w1", &[]).await;
    // An empty claim answers 204 at once.
    let (status, none) = w.claim(0).await;
    assert_eq!((status, none), (204, Value::Null));

    let run = ctl.submit("shapes", 2, &[]).await;
    let (lease, a) = w.take().await;
    assert_eq!(a["run_id"], run.as_str());
    assert_eq!(a["phase"], "implementation");
    assert_eq!(a["attempt"], 1);
    assert_eq!(a["epoch"], 1);
    assert!(rfc3339(&a["lease_expires_at"]), "{a}");
    assert_eq!(a["workspace"]["source"], "shared_fs");
    assert!(a["workspace"]["path"]
        .as_str()
        .is_some_and(|p| p.ends_with("shapes")));
    assert!(a["prompt"].as_str().is_some_and(|p| !p.is_empty()), "{a}");
    assert!(a["agent"]["command"]
        .as_array()
        .is_some_and(|c| !c.is_empty()));
    assert!(a["agent"]["timeout_sec"].is_u64());
    assert!(a["agent"]["env"].is_object());
    assert!(["exact", "trailing"].contains(&a["completion_mode"].as_str().unwrap()));
    let s = ctl.step(&run, &lease.step).await;
    assert_eq!(s["status"], "IN_PROGRESS");
    assert_eq!(s["worker_id"], w.id.as_str());
    assert_eq!(s["lease_epoch"], 1);
    assert!(rfc3339(&s["lease_expires_at"]));

    // Heartbeat: 200 {leases: [{step_id, epoch, expires_at, action: continue}]}.
    let (status, hb) = w.heartbeat("busy", &[&lease]).await;
    assert_eq!(status, 200, "{hb}");
    let v = &hb["leases"][0];
    assert_eq!(v["step_id"], lease.step.as_str());
    assert_eq!(v["epoch"], 1);
    assert_eq!(v["action"], "continue");
    assert!(rfc3339(&v["expires_at"]));

    // Output: 202 {next_offset}; the bytes are held.
    let (status, ack) = w.output(&lease, 0, "hello ").await;
    assert_eq!((status, ack["next_offset"].as_u64()), (202, Some(6)));
    let (status, ack) = w.output(&lease, 6, "world\n").await;
    assert_eq!((status, ack["next_offset"].as_u64()), (202, Some(12)));
    // A resent chunk is harmless.
    let (status, ack) = w.output(&lease, 6, "world\n").await;
    assert_eq!((status, ack["next_offset"].as_u64()), (202, Some(12)));
    assert_eq!(ctl.output_size(&run, &lease.step), 12);
    // Past the end: 409 offset_gap with where to resume.
    let (status, gap) = w.output(&lease, 100, "x").await;
    assert_eq!(
        (status, gap["code"].as_str(), gap["next_offset"].as_u64()),
        (409, Some("offset_gap"), Some(12))
    );

    // Events: 202; stored under the step.
    let (status, _) = w.event(&lease, "AGENT_NOTE").await;
    assert_eq!(status, 202);
    let notes = ctl.step_events(&lease.step, &["AGENT_NOTE"]);
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].payload(), json!({"n": 1}));

    // Artifacts: 201 {name, size, sha256}; readable through the runs API.
    let bytes = b"artifact bytes\n";
    let (status, art) = w.artifact(&lease, "notes/a.txt", bytes).await;
    assert_eq!(status, 201, "{art}");
    let sha = hex::encode(Sha256::digest(bytes));
    assert_eq!(
        art,
        json!({"name": "notes/a.txt", "size": bytes.len(), "sha256": sha})
    );
    let got = ctl
        .client
        .get(ctl.url(&format!("/runs/{run}/artifacts/notes/a.txt")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&got[..], bytes);
    assert_eq!(ctl.step_events(&lease.step, &["ARTIFACT_STORED"]).len(), 1);

    // Complete: 200 {}; the step is SUCCEEDED and its lease gone.
    let done = Worker::completion(&lease);
    let (status, body) = w.complete(&lease, &done).await;
    assert_eq!((status, body), (200, json!({})));
    let s = ctl.step(&run, &lease.step).await;
    assert_eq!(s["status"], "SUCCEEDED");
    assert_eq!(s["exit_code"], 0);
    let (_, hb) = w.heartbeat("idle", &[&lease]).await;
    assert_eq!(
        hb["leases"][0]["action"], "stop",
        "a completed step's lease is gone"
    );

    // Release: 200 {}; the next step is queued again without using a retry.
    let (next, _) = w.take().await;
    assert_eq!(next.run, run);
    let (status, body) = w.release(&next).await;
    assert_eq!((status, body), (200, json!({})));
    let s = ctl.step(&run, &next.step).await;
    assert!(s["status"] == "RETRYING" || s["status"] == "QUEUED", "{s}");
    assert_eq!(s["infra_attempts"], 0, "a release uses no retry");
    let released = ctl.step_events(&next.step, &["LEASE_RELEASED"]);
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].payload()["reason"], "test release");
    assert_eq!(released[0].payload()["epoch"], next.epoch);
    // Claimed again: the epoch grows.
    let (again, _) = w.take().await;
    assert_eq!(
        (again.step.as_str(), again.epoch),
        (next.step.as_str(), next.epoch + 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_identical_completion_is_idempotent() {
    let ctl = Ctl::start("ctl-idem", LONG).await;
    let w = ctl.worker("w1", &[]).await;
    let run = ctl.submit("idem", 2, &[]).await;
    let (lease, _) = w.take().await;
    let done = Worker::completion(&lease);
    assert_eq!(w.complete(&lease, &done).await.0, 200);
    // Let the scheduler queue the next step, so the state is settled.
    let next = ctl.queued_step(&run).await;
    assert_ne!(next, lease.step);
    let before = ctl.snapshot();
    let (status, body) = w.complete(&lease, &done).await;
    assert_eq!((status, body), (200, json!({})), "the repeat is accepted");
    assert_eq!(ctl.snapshot(), before, "the repeat changed something");
    assert_eq!(ctl.step_events(&lease.step, &["STEP_FINISHED"]).len(), 1);
    let steps = ctl.steps(&run).await;
    assert_eq!(steps.len(), 2, "one effect: one next step, {steps:?}");
    // A different completion of the finished step is stale.
    let mut other = done.clone();
    other["exit_code"] = json!(3);
    other["status"] = json!("failed");
    crate::harness::refused(&w.complete(&lease, &other).await, 409, "stale_lease");
    assert_eq!(ctl.snapshot(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_git_run_s_assignments_name_the_repository_and_carry_the_last_checkpoint() {
    let ctl = Ctl::start("ctl-git", LONG).await;
    let w = ctl.worker("w", &[]).await;
    let repo = crate::support::repo::Repo::create(ctl.dir.path(), "gitrepo", 2, "tick", &[]);
    let run = crate::support::pool::submit_git(&ctl.client, &ctl.base, &repo, "gitrun").await;
    let (lease, a) = w.take().await;
    assert_eq!(lease.run, run);
    let ws = &a["workspace"];
    assert_eq!(ws["source"], "git", "{a}");
    assert_eq!(ws["repo_url"], repo.url().as_str());
    assert!(
        ws["repo_ref"].as_str().is_some_and(|r| !r.is_empty()),
        "{ws}"
    );
    assert!(
        ws["run_branch"].as_str().is_some_and(|b| !b.is_empty()),
        "{ws}"
    );
    assert!(
        ws["checkpoint"].is_null(),
        "a first step has no checkpoint: {ws}"
    );

    // The step's checkpoint bundle is an artifact; the next step is told to restore it.
    let bundle = b"not really a bundle";
    assert_eq!(w.artifact(&lease, "step-1.bundle", bundle).await.0, 201);
    let mut done = Worker::completion(&lease);
    done["checkpoint"] = json!({"kind": "git_bundle", "name": "step-1.bundle", "head": "0123abcd"});
    done["artifacts"] = json!([{"name": "step-1.bundle", "size": bundle.len(),
                                "sha256": hex::encode(Sha256::digest(bundle))}]);
    assert_eq!(w.complete(&lease, &done).await.0, 200);
    let (next, a) = w.take().await;
    assert_ne!(next.step, lease.step);
    let cp = &a["workspace"]["checkpoint"];
    assert_eq!(
        (cp["name"].as_str(), cp["head"].as_str()),
        (Some("step-1.bundle"), Some("0123abcd")),
        "{a}"
    );
    // The worker holding the next step may read the bundle back.
    let path = format!(
        "/steps/{}/artifacts/step-1.bundle?epoch={}",
        next.step, next.epoch
    );
    let got = w.req(reqwest::Method::GET, &path).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(&got.bytes().await.unwrap()[..], bundle);
    // The previous step's lease reads nothing any more.
    let path = format!(
        "/steps/{}/artifacts/step-1.bundle?epoch={}",
        lease.step, lease.epoch
    );
    let (status, body) = crate::harness::answer(w.req(reqwest::Method::GET, &path)).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("stale_lease")));
}
