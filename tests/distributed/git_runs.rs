//! A git-mode run on a controller and two workers: the steps run on the workers' own clones,
//! every artifact lands in S3 and reads back through the runs API, and the final checkpoint
//! bundle holds the whole run branch.

use crate::cluster::{sha256, Cluster, Timings};
use crate::support::repo::Repo;

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
    for a in &artifacts {
        let name = a["name"].as_str().expect("name");
        let object = std::fs::read(c.object_path(&id, name))
            .unwrap_or_else(|e| panic!("{name} is not in the S3 bucket: {e}"));
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
