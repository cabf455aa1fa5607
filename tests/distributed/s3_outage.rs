//! The S3 store goes away while a step's artifacts are being uploaded: the uploads are retried,
//! then the step fails with a reason naming the upload, the run fails, and the controller
//! stays healthy. Once the store is back, retrying the run completes it. A store that is down
//! when a step must restore the run's checkpoint fails the step saying so.

use crate::cluster::{Cluster, Timings};
use crate::support::repo::Repo;
use crate::support::wait_for;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_outage_fails_the_step_clearly_and_a_retry_after_it_completes_the_run() {
    let mut c = Cluster::start("s3-outage", 2, Timings::default()).await;
    let repo = Repo::create(c.dir.path(), "origin", 2, "slow 2", &[]);
    let id = c.submit_git(&repo, &[]).await;

    // Take the store away while the agent of the second implementation step runs (its
    // workspace restored from the first checkpoint): its uploads meet a dead store.
    let step = c
        .wait_step(&id, "the second implementation step to run", |s| {
            s["phase"] == "implementation" && s["attempt"] == 2 && s["status"] == "IN_PROGRESS"
        })
        .await;
    let holder = c
        .index_of(step["worker_id"].as_str().expect("worker"))
        .await;
    let prompt = c.workers[holder]
        .data_dir
        .join("work/steps")
        .join(step["id"].as_str().expect("id"))
        .join("prompt.txt");
    let prompt = &prompt;
    wait_for(
        "the agent to start",
        Duration::from_secs(30),
        || async move { prompt.exists().then_some(()) },
    )
    .await;
    assert!(c.checkpoint_stored(&id), "first checkpoint stored");
    c.s3.stop().await;

    let run = c.wait_status(&id, "FAILED").await;
    let reason = run["failure_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("artifact upload failed") && reason.contains("iter-02-impl.log"),
        "the run's reason names the upload: {reason}"
    );
    let steps = c.steps(&id).await;
    let failed = steps
        .iter()
        .find(|s| s["id"] == step["id"])
        .expect("the step");
    assert_eq!(failed["status"], "FAILED");
    let why = failed["failure_reason"].as_str().unwrap_or_default();
    assert!(
        why.contains("artifact upload failed") && why.contains("artifact store"),
        "the step's reason is clear: {why}"
    );
    let log = c.controller.log_text();
    assert!(
        log.contains("artifact upload attempt failed; retrying"),
        "the controller retried the upload"
    );

    // The controller itself is fine.
    let ready = c
        .http
        .get(c.url("/ready"))
        .send()
        .await
        .expect("GET /ready");
    assert_eq!(ready.status().as_u16(), 200);
    assert!(c.get("/runs").await["runs"].is_array());
    assert_eq!(
        c.get("/workers").await["workers"].as_array().map(Vec::len),
        Some(2)
    );
    assert!(!c.artifacts(&id).await.is_empty());

    c.s3.restart().await;
    assert_eq!(c.control(&id, "retry").await, 204);
    let what = "the retried run to leave FAILED";
    wait_for(what, Duration::from_secs(10), || async {
        (c.run(&id).await["status"] != "FAILED").then_some(())
    })
    .await;
    c.wait_status(&id, "COMPLETED").await;
    let subjects = c.bundle_subjects(&repo, &id).await;
    assert_eq!(
        subjects,
        ["initial", "task 1: task number 1", "task 2: task number 2"],
        "the failed step's work was not kept twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_that_cannot_be_fetched_fails_the_step_naming_the_store() {
    let mut c = Cluster::start("s3-checkpoint", 1, Timings::default()).await;
    let repo = Repo::create(c.dir.path(), "origin", 1, "slow 1", &[]);
    let id = c.submit_git(&repo, &[]).await;
    c.wait_step(&id, "the first step to run", |s| {
        s["status"] == "IN_PROGRESS"
    })
    .await;
    // Pause: the step finishes (its checkpoint stored), the next one waits.
    assert_eq!(c.control(&id, "pause").await, 204);
    c.wait_step(&id, "the first step to finish", |s| {
        s["status"] == "SUCCEEDED"
    })
    .await;
    let c_ref = &c;
    let run_id = &id;
    wait_for("the checkpoint", Duration::from_secs(10), || async move {
        c_ref.checkpoint_stored(run_id).then_some(())
    })
    .await;
    c.s3.stop().await;
    assert_eq!(c.control(&id, "resume").await, 204);

    let run = c.wait_status(&id, "FAILED").await;
    let reason = run["failure_reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("infrastructure_failed:")
            && reason.contains("cannot fetch checkpoint checkpoints/")
            && reason.contains("artifact store"),
        "{reason}"
    );
}
