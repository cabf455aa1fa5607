//! A git-mode run on a controller and two workers: the steps run on the workers' own clones,
//! every artifact lands in S3 and reads back through the runs API, and the final checkpoint
//! bundle holds the whole run branch; a worker removes the clones it has not used for
//! `worker.clone_keep_hours`, at start and while it runs (but not those of its running steps).

use crate::cluster::{sha256, Cluster, Timings};
use crate::support::repo::Repo;
use crate::support::wait_for;
use nix::sys::signal::Signal;
use std::time::{Duration, SystemTime};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_git_run_of_four_tasks_completes_on_two_workers_with_its_artifacts_in_s3() {
    let c = Cluster::start("git-run", 2, Timings::default()).await;
    let repo = Repo::create(
        c.dir.path(),
        "origin",
        4,
        "tick",
        &["verify_cmds=test -f PLAN.md"],
    );
    let id = c.submit_git(&repo, &[]).await;
    let run = c.wait_status(&id, "COMPLETED").await;
    assert_eq!(run["workspace_source"], "git");
    assert_eq!(run["artifact_store"], "s3");

    let steps = c.steps(&id).await;
    assert!(
        steps.iter().all(|s| s["status"] == "SUCCEEDED"),
        "every step succeeded: {steps:#?}"
    );
    let impls = steps
        .iter()
        .filter(|s| s["phase"] == "implementation")
        .count();
    assert_eq!(impls, 5, "four tasks, then the completion: {steps:#?}");

    let artifacts = c.artifacts(&id).await;
    let names: Vec<&str> = artifacts
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    for want in [
        "run.bundle",
        "prompt.txt",
        "iter-01-impl.log",
        "iter-05-impl.log",
        "iter-01-verify.log",
        "report.tsv",
    ] {
        assert!(names.contains(&want), "artifact {want} missing: {names:?}");
    }
    let steps = c.steps(&id).await;
    for a in &artifacts {
        let name = a["name"].as_str().expect("name");
        // A step's files are under its lease's prefix, even uploaded through the controller.
        let by_lease = c.lease_object(&id, a, &steps);
        if name.starts_with("iter-") {
            assert!(by_lease.is_some(), "{name} is not under its lease's prefix");
        }
        let path = by_lease.unwrap_or_else(|| c.object_path(&id, name));
        let object =
            std::fs::read(&path).unwrap_or_else(|e| panic!("{name} is not in the S3 bucket: {e}"));
        assert_eq!(sha256(&object), a["sha256"], "{name}: S3 object vs listing");
        assert_eq!(object.len() as u64, a["size"], "{name}: size");
        let downloaded = c.download(&id, name).await;
        assert_eq!(
            sha256(&downloaded),
            a["sha256"],
            "{name}: download vs listing"
        );
    }

    let subjects = c.bundle_subjects(&repo, &id).await;
    assert_eq!(
        subjects,
        [
            "initial",
            "task 1: task number 1",
            "task 2: task number 2",
            "task 3: task number 3",
            "task 4: task number 4",
        ],
        "the run branch of the final bundle holds every task's commit once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_verification_s_notes_reach_the_next_step_on_a_remote_clone() {
    let c = Cluster::start("git-verify", 2, Timings::default()).await;
    let repo = Repo::create(
        c.dir.path(),
        "origin",
        2,
        "tick",
        &["verify_cmds=test -f fixed.txt"],
    );
    let id = c.submit_git(&repo, &[]).await;
    c.wait_status(&id, "COMPLETED").await;
    let steps = c.steps(&id).await;
    let verify: Vec<&str> = steps
        .iter()
        .filter(|s| s["phase"] == "verification")
        .filter_map(|s| s["status"].as_str())
        .collect();
    assert_eq!(verify.first(), Some(&"FAILED"), "{steps:#?}");
    assert!(c
        .artifacts(&id)
        .await
        .iter()
        .any(|a| a["name"] == "runner-notes.txt"));
    let subjects = c.bundle_subjects(&repo, &id).await;
    assert_eq!(
        subjects,
        [
            "initial",
            "task 1: task number 1",
            "fix the failing verification",
            "task 2: task number 2",
        ],
        "the agent read the runner notes in its clone and fixed the failure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_may_upload_its_artifacts_straight_to_s3() {
    let mut c = Cluster::start("git-direct", 0, Timings::default()).await;
    let s3 = c.s3.settings();
    let endpoint = s3.endpoint.clone().expect("endpoint");
    let bucket = c.s3.bucket().to_string();
    let (key, secret) = (c.s3.access_key().to_string(), c.s3.secret_key().to_string());
    c.add_worker(
        &[],
        &[
            ("LOOPD__WORKER__ARTIFACT_UPLOAD", "direct"),
            ("RUST_LOG", "info,loopd::artifacts=debug"),
            ("LOOPD__ARTIFACTS__TYPE", "s3"),
            ("LOOPD__ARTIFACTS__BUCKET", &bucket),
            ("LOOPD__ARTIFACTS__ENDPOINT", &endpoint),
            ("LOOPD__ARTIFACTS__REGION", &s3.region),
            ("LOOPD__ARTIFACTS__ACCESS_KEY_ID", &key),
            ("LOOPD__ARTIFACTS__SECRET_ACCESS_KEY", &secret),
        ],
    )
    .await;
    let repo = Repo::create(c.dir.path(), "origin", 2, "tick", &[]);
    let id = c.submit_git(&repo, &[]).await;
    c.wait_status(&id, "COMPLETED").await;
    let worker_log = c.workers[0].log_text();
    assert!(
        worker_log.contains("artifact stored") && worker_log.contains("checkpoints/"),
        "the worker itself stored the artifacts"
    );
    // What the worker stored itself is under its lease's own keys
    // (`runs/<run>/steps/<step>/<epoch>/<name>`); the controller's own files are not.
    let steps = c.steps(&id).await;
    let mut by_lease = 0;
    for a in c.artifacts(&id).await {
        let name = a["name"].as_str().expect("name");
        let path = match c.lease_object(&id, &a, &steps) {
            Some(p) => {
                by_lease += 1;
                p
            }
            None => c.object_path(&id, name),
        };
        let object = std::fs::read(&path).expect("object in S3");
        assert_eq!(sha256(&object), a["sha256"], "{name}");
    }
    assert!(
        by_lease >= 4,
        "the worker's uploads are keyed by lease: {by_lease}"
    );
    let subjects = c.bundle_subjects(&repo, &id).await;
    assert_eq!(
        subjects,
        ["initial", "task 1: task number 1", "task 2: task number 2"]
    );
}

/// Sets a directory's modification time (what a worker reads as the clone's last use).
fn last_used(dir: &std::path::Path, ago: Duration) {
    std::fs::create_dir_all(dir).expect("dir");
    let f = std::fs::File::open(dir).expect("open dir");
    f.set_modified(SystemTime::now() - ago).expect("set mtime");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_removes_at_start_the_clones_unused_for_clone_keep_hours() {
    let mut c = Cluster::start("git-clones", 0, Timings::default()).await;
    c.add_worker(&[], &[("LOOPD__WORKER__CLONE_KEEP_HOURS", "48")])
        .await;
    let repo = Repo::create(c.dir.path(), "origin", 1, "tick", &[]);
    let id = c.submit_git(&repo, &[]).await;
    c.wait_status(&id, "COMPLETED").await;
    let clones = c.workers[0].data_dir.join("work/clones");
    assert!(
        clones.join(&id).join(".git").is_dir(),
        "a run's clone stays after its steps"
    );

    c.workers[0].signal(Signal::SIGTERM);
    c.workers[0].wait_exit(Duration::from_secs(30)).await;
    const HOUR: Duration = Duration::from_secs(3600);
    last_used(&clones.join(&id), 72 * HOUR);
    last_used(&clones.join("recent-run"), HOUR);
    c.workers[0].start();
    let w = &c.workers[0];
    wait_for(
        "the worker to remove unused clones",
        Duration::from_secs(30),
        || async { w.log_text().contains("removed unused clones").then_some(()) },
    )
    .await;
    assert!(!clones.join(&id).exists(), "unused for 72 h, kept 48 h");
    assert!(clones.join("recent-run").is_dir(), "used an hour ago");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_worker_removes_unused_clones_but_not_those_of_its_running_steps() {
    let mut c = Cluster::start("git-sweep", 0, Timings::default()).await;
    c.add_worker(
        &[],
        &[
            ("LOOPD__WORKER__CLONE_KEEP_HOURS", "48"),
            ("LOOPD__WORKER__CLONE_SWEEP_INTERVAL_MS", "200"),
        ],
    )
    .await;
    let done_repo = Repo::create(c.dir.path(), "done", 1, "tick", &[]);
    let done = c.submit_git(&done_repo, &[]).await;
    c.wait_status(&done, "COMPLETED").await;
    let hung_repo = Repo::create(c.dir.path(), "hung", 1, "hang", &[]);
    let hung = c.submit_git(&hung_repo, &[]).await;
    let clones = c.workers[0].data_dir.join("work/clones");
    // The hanging agent runs in its run's clone.
    let pids = crate::support::hang_pids(&clones.join(&hung)).await;

    // Both clones look unused for three days; the worker is not restarted.
    const HOUR: Duration = Duration::from_secs(3600);
    last_used(&clones.join(&done), 72 * HOUR);
    last_used(&clones.join(&hung), 72 * HOUR);
    last_used(&clones.join("recent-run"), HOUR);
    let gone = clones.join(&done);
    wait_for(
        "the running worker to remove the unused clone",
        Duration::from_secs(30),
        || async { (!gone.exists()).then_some(()) },
    )
    .await;
    let hung_used = std::fs::metadata(clones.join(&hung))
        .and_then(|m| m.modified())
        .expect("the running step's clone");
    assert!(
        hung_used < SystemTime::now() - 48 * HOUR,
        "still looks unused (so only its running step kept it)"
    );
    assert!(
        clones.join(&hung).join(".git").is_dir(),
        "the clone of a step running here stays, however old it looks"
    );
    assert!(clones.join("recent-run").is_dir(), "used an hour ago");
    assert!(
        pids.iter().all(|p| crate::support::alive(*p)),
        "the step runs on"
    );

    // Cancelled, and its agent gone before the cluster goes (no process left behind).
    assert_eq!(c.control(&hung, "cancel").await, 204);
    c.wait_status(&hung, "CANCELED").await;
    let pids = &pids;
    wait_for(
        "the hanging agent's processes to be gone",
        Duration::from_secs(30),
        || async move {
            pids.iter()
                .all(|p| !crate::support::alive(*p))
                .then_some(())
        },
    )
    .await;
}
