//! Active-active controllers on one database: workers given every controller's URL, runs
//! submitted through one, and the controller a worker talks to killed with SIGKILL in the
//! middle of its steps. The worker moves to the other controller with its step, its lease and
//! its output; the other controller, which never saw it register, knows it from the database.

use crate::cluster::{Cluster, Timings};
use crate::support::proc::bin;
use crate::support::repo::Repo;

/// Each `drip` line of every implementation step's live output exactly once, in order.
fn assert_output_whole(c: &Cluster, id: &str, steps: &[serde_json::Value], lines: usize) {
    for s in steps.iter().filter(|s| s["phase"] == "implementation") {
        let step = s["id"].as_str().expect("step id");
        let path = c
            .controller
            .data_dir
            .join("output")
            .join(id)
            .join(format!("{step}.log"));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for i in 1..=lines {
            let line = format!("drip line {i} of {lines}\n");
            assert_eq!(
                text.matches(&line).count(),
                1,
                "step {step}: {line:?} once in its output: {text:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_moves_to_the_next_controller_when_its_controller_is_killed() {
    let mut c = Cluster::start("two_controllers", 0, Timings::default()).await;
    c.add_controller().await;
    let urls = c.controller_urls();
    // Both workers know both controllers and start with the first.
    c.add_worker_of(&urls, &[], &[]).await;
    c.add_worker_of(&urls, &[], &[]).await;
    let repo = Repo::create(c.dir.path(), "origin", 3, "drip 10", &[]);
    let id = c.submit_git(&repo, &[]).await;
    c.wait_step(&id, "the second implementation step to run", |s| {
        s["phase"] == "implementation" && s["attempt"] == 2 && s["status"] == "IN_PROGRESS"
    })
    .await;

    // The first controller dies; the helpers read through the second from now on.
    let dead = c.controller.url();
    c.controller.kill9();
    std::mem::swap(&mut c.controller, &mut c.others[0]);

    c.wait_status(&id, "COMPLETED").await;
    let steps = c.steps(&id).await;
    for s in &steps {
        assert_eq!(s["status"], "SUCCEEDED", "{s}");
        assert_eq!(s["lease_epoch"], 1, "each step leased once: {s}");
        assert_eq!(s["infra_attempts"], 0, "no lease lost: {s}");
    }
    let events = c.events(&id).await;
    for lost in ["LEASE_EXPIRED", "LEASE_RELEASED"] {
        assert!(
            !events.iter().any(|e| e["event_type"] == lost),
            "no lease taken back: {events:#?}"
        );
    }
    let subjects = c.bundle_subjects(&repo, &id).await;
    assert_eq!(
        subjects,
        [
            "initial",
            "task 1: task number 1",
            "task 2: task number 2",
            "task 3: task number 3"
        ],
        "each task's commit exactly once"
    );
    assert_output_whole(&c, &id, &steps, 10);

    // The CLI given both controllers uses the one that answers.
    let out = std::process::Command::new(bin())
        .args(["list", "--json"])
        .env("LOOPD_ADDR", format!("{dead},{}", c.controller.url()))
        .output()
        .expect("loopd list");
    assert!(out.status.success(), "{out:?}");
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(
        listed.to_string().contains(&id),
        "the run is listed: {listed}"
    );
}
