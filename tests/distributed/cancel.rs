//! Cancelling a run whose step runs on a remote worker: the worker learns it from its next
//! heartbeat and kills the step's whole process group (TERM, grace, KILL).

use crate::cluster::{Cluster, Timings};
use crate::support::repo::Repo;
use crate::support::wait_for;
use crate::support::{alive, hang_pids};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_run_kills_its_step_on_the_remote_worker_within_a_heartbeat_and_the_grace() {
    let c = Cluster::start("cancel", 2, Timings::default()).await;
    let repo = Repo::create(c.dir.path(), "origin", 1, "hang", &[]);
    let id = c.submit_git(&repo, &[]).await;
    let step = c
        .wait_step(&id, "the step to be leased", |s| {
            s["status"] == "IN_PROGRESS"
        })
        .await;
    let holder = c
        .index_of(step["worker_id"].as_str().expect("worker"))
        .await;
    let clone = c.workers[holder].data_dir.join("work/clones").join(&id);
    let pids = hang_pids(&clone).await;
    assert!(pids.iter().all(|p| alive(*p)), "the agent hangs: {pids:?}");

    let asked = Instant::now();
    assert_eq!(c.control(&id, "cancel").await, 204);
    let pids = &pids;
    wait_for(
        "the agent's processes to be gone",
        Duration::from_secs(10),
        || async move { pids.iter().all(|p| !alive(*p)).then_some(()) },
    )
    .await;
    let took = asked.elapsed();
    let t = &c.timings;
    // One heartbeat interval plus the grace, and some slack for a loaded machine.
    let bound = Duration::from_millis(t.heartbeat + t.kill_grace + 1000);
    assert!(took < bound, "killed after {took:?} (bound {bound:?})");

    let run = c.wait_status(&id, "CANCELED").await;
    assert_eq!(run["status"], "CANCELED");
    let step = c
        .wait_step(&id, "the step to be CANCELED", |s| {
            s["status"] == "CANCELED"
        })
        .await;
    assert!(step["ended_at"].is_string(), "{step}");
}
