//! Faults real pools see, with real processes: the controller killed and restarted mid-run or
//! frozen past its workers' leases, Postgres restarted under a running controller, a worker
//! frozen past its lease, and a worker cut off by a network partition (network namespaces made
//! by the test; skipped with a printed reason where the machine does not allow them). Each test
//! checks that every run ends in the right state with each task's commit exactly once, and
//! every completed step's events, artifacts and output present.

#[path = "../support/mod.rs"]
mod support;

mod netns;
mod pause;

use nix::sys::signal::Signal;
use serde_json::Value;
use std::time::Duration;
use support::audit::verify_runs;
use support::pg::{OwnCluster, TestDb};
use support::pool::{self, controller_env, refs, submit_git, wait_status};
use support::proc::Loopd;
use support::repo::Repo;
use support::{alive, free_port, test_dir, wait_for};

const LONG: Duration = Duration::from_secs(120);

async fn audit(
    client: &reqwest::Client,
    base: &str,
    ids: &[String],
    repos: &[&Repo],
    names: &[&str],
    dir: &std::path::Path,
    tasks: usize,
) {
    let branches: Vec<String> = names.iter().map(|n| format!("run/{n}")).collect();
    let r = verify_runs(client, base, ids, repos, &branches, dir, tasks).await;
    assert!(
        r.completed == ids.len() && r.duplicates == 0 && r.lost == 0,
        "audit: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_killed_mid_run_comes_back_with_every_run_as_it_was() {
    let dir = test_dir("controller-restart");
    let db = TestDb::create();
    let env = controller_env(
        &db.url,
        &[
            ("LOOPD__SCHEDULER__MAX_CONCURRENT_RUNS", "1"),
            ("LOOPD__SCHEDULER__MAX_RUNS_PER_WORKSPACE", "5"),
        ],
    );
    let mut controller = pool::controller(dir.path(), &env).await;
    let base = controller.url();
    let client = reqwest::Client::new();
    let workers: Vec<Loopd> = (0..2)
        .map(|i| pool::worker(dir.path(), &format!("w{i}"), &base, &[]))
        .collect();
    let names = ["paused", "running", "pending"];
    let repos: Vec<Repo> = names
        .iter()
        .map(|n| Repo::create(dir.path(), n, 2, "slow 1", &["reviewer=false"]))
        .collect();

    let a = submit_git(&client, &base, &repos[0], names[0]).await;
    wait_status(&client, &base, &a, "RUNNING", LONG).await;
    let r = client
        .post(format!("{base}/runs/{a}/pause"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let b = submit_git(&client, &base, &repos[1], names[1]).await;
    pool::running_step(&client, &base, &b, LONG).await;
    let c = submit_git(&client, &base, &repos[2], names[2]).await;

    controller.kill9();
    controller.start();
    controller.wait_ready("/ready").await;
    for (id, want) in [(&a, "PAUSED"), (&b, "RUNNING"), (&c, "PENDING")] {
        let run = pool::run(&client, &base, id)
            .await
            .expect("run after restart");
        assert_eq!(run["status"], want, "{id} came back as {}", run["status"]);
    }
    // The workers kept their step through the outage and complete it.
    wait_status(&client, &base, &b, "COMPLETED", LONG).await;
    wait_status(&client, &base, &c, "COMPLETED", LONG).await;
    let r = client
        .post(format!("{base}/runs/{a}/resume"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    wait_status(&client, &base, &a, "COMPLETED", LONG).await;
    let repo_refs: Vec<&Repo> = repos.iter().collect();
    audit(
        &client,
        &base,
        &[a, b, c],
        &repo_refs,
        &names,
        dir.path(),
        2,
    )
    .await;
    drop(workers);
}

/// Leases of `db` that are past their expiry by the database clock.
fn due_leases(db: &TestDb) -> i64 {
    count(
        db,
        "SELECT count(*) AS n FROM leases \
         WHERE expires_at < (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
    )
}

/// Waits until the worker's log says it started `step` (running, not only leased).
async fn wait_started(w: &Loopd, step: &Value) {
    let sid = step["id"].as_str().expect("step id").to_string();
    wait_for("the worker to start the step", LONG, || async {
        (w.log_text().lines())
            .any(|l| l.contains(&sid) && l.contains("step started"))
            .then_some(())
    })
    .await;
}

/// Waits until the one lease is past its expiry by the database clock.
async fn wait_lease_due(db: &TestDb) {
    wait_for("the lease to fall due", LONG, || async {
        (due_leases(db) == 1).then_some(())
    })
    .await;
}

/// `step` (as read while it ran) succeeded under the same lease, never lost.
async fn ran_once(client: &reqwest::Client, base: &str, run: &str, step: &Value) {
    let steps = pool::steps(client, base, run).await;
    let now = steps
        .iter()
        .find(|s| s["id"] == step["id"])
        .expect("the step that ran through the fault");
    assert_eq!(now["status"], "SUCCEEDED", "{now}");
    assert_eq!(now["lease_epoch"], step["lease_epoch"], "{now}");
    assert_eq!(now["infra_attempts"], 0, "{now}");
}

/// The `n` a `SELECT count(*) AS n …` finds in the test's database.
fn count(db: &TestDb, query: &str) -> i64 {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut c = diesel::PgConnection::establish(&db.url).expect("test database");
    diesel::sql_query(query)
        .get_result::<N>(&mut c)
        .unwrap_or_else(|e| panic!("{query}: {e}"))
        .n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_down_longer_than_a_lease_takes_no_step_from_its_live_workers() {
    let dir = test_dir("controller-outage");
    let db = TestDb::create();
    let env = controller_env(&db.url, &[]);
    let mut controller = pool::controller(dir.path(), &env).await;
    let base = controller.url();
    let client = reqwest::Client::new();
    let w = pool::worker(dir.path(), "w0", &base, &[]);
    let repo = Repo::create(dir.path(), "outage", 1, "slow 12", &["reviewer=false"]);
    let id = submit_git(&client, &base, &repo, "outage").await;
    let (step, _) = pool::running_step(&client, &base, &id, LONG).await;
    // Running on the worker, not only leased: killed before its claim's answer arrived, the
    // controller would rightly let that lease expire.
    wait_started(&w, &step).await;

    controller.kill9();
    // Stay down until the step's lease is past its expiry by the database clock.
    wait_lease_due(&db).await;
    controller.start();
    controller.wait_ready("/ready").await;
    wait_status(&client, &base, &id, "COMPLETED", LONG).await;
    ran_once(&client, &base, &id, &step).await;
    let branches = ["run/outage".to_string()];
    let r = verify_runs(&client, &base, &[id], &[&repo], &branches, dir.path(), 1).await;
    assert_eq!(
        r.leases_expired, 0,
        "the restarted controller took the lease of a live worker: {r:?}"
    );
    assert!(
        r.completed == 1 && r.duplicates == 0 && r.lost == 0,
        "audit: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_fail_cleanly_while_postgres_is_down_and_everything_recovers() {
    let dir = test_dir("pg-restart");
    let cluster = OwnCluster::start();
    let env = controller_env(
        &cluster.url("loopd"),
        &[
            ("LOOPD__LEASE__TTL_MS", "20000"),
            ("LOOPD__LEASE__WORKER_OFFLINE_AFTER_MS", "15000"),
        ],
    );
    let controller = pool::controller(dir.path(), &env).await;
    let base = controller.url();
    let client = reqwest::Client::new();
    let _w = pool::worker(dir.path(), "w0", &base, &[]);
    let repo = Repo::create(dir.path(), "pgdown", 3, "slow 1", &["reviewer=false"]);
    let id = submit_git(&client, &base, &repo, "pgdown").await;
    pool::running_step(&client, &base, &id, LONG).await;

    cluster.stop();
    let r = client
        .get(format!("{base}/runs/{id}"))
        .send()
        .await
        .expect("answered while the database is down");
    assert!(r.status().is_server_error(), "{}", r.status());
    let body: Value = r.json().await.expect("a JSON error body");
    assert!(
        body["code"].is_string() && body["error"].is_string(),
        "{body}"
    );
    assert!(
        !body
            .to_string()
            .to_lowercase()
            .contains("connection refused"),
        "5xx bodies are opaque: {body}"
    );
    let health = client.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200, "the process stays up");
    let ready = client.get(format!("{base}/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "not ready without its database");

    cluster.resume();
    controller.wait_ready("/ready").await;
    let done = wait_status(&client, &base, &id, "COMPLETED", LONG).await;
    assert_eq!(done["failure_reason"], Value::Null);
    audit(&client, &base, &[id], &[&repo], &["pgdown"], dir.path(), 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_frozen_past_its_lease_is_refused_and_kills_its_own_step() {
    let dir = test_dir("sigstop");
    let db = TestDb::create();
    let env = controller_env(&db.url, &[]);
    let controller = pool::controller(dir.path(), &env).await;
    let base = controller.url();
    let client = reqwest::Client::new();
    let workers = [
        pool::worker(dir.path(), "w0", &base, &[]),
        pool::worker(dir.path(), "w1", &base, &[]),
    ];
    let repo = Repo::create(dir.path(), "frozen", 2, "slow 3", &["reviewer=false"]);
    let id = submit_git(&client, &base, &repo, "frozen").await;
    let (step, holder) = pool::running_step(&client, &base, &id, LONG).await;
    let frozen = workers
        .iter()
        .find(|w| pool::worker_id_of(w).as_deref() == Some(holder.as_str()))
        .expect("the holder is one of ours");
    frozen.signal(Signal::SIGSTOP);
    // The step moves to the other worker once the frozen one is declared offline.
    let sid = step["id"].as_str().unwrap().to_string();
    wait_for("the step to be re-leased", LONG, || async {
        let s = pool::steps(&client, &base, &id).await;
        s.into_iter()
            .find(|s| s["id"] == sid.as_str() && s["lease_epoch"].as_i64() > Some(1))
            .map(|_| ())
    })
    .await;
    frozen.signal(Signal::SIGCONT);
    wait_status(&client, &base, &id, "COMPLETED", LONG).await;
    wait_for("the thawed worker to give up its step", LONG, || async {
        frozen.log_text().contains("lease lost").then_some(())
    })
    .await;
    audit(&client, &base, &[id], &[&repo], &["frozen"], dir.path(), 2).await;
}

/// The pids (shell, child) of each `scribble` agent that has written to `file`, in order.
fn scribblers(file: &std::path::Path) -> Vec<(i32, i32)> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut seen: Vec<(i32, i32)> = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace().filter_map(|p| p.parse().ok());
        if let (Some(a), Some(b)) = (f.next(), f.next()) {
            if !seen.contains(&(a, b)) {
                seen.push((a, b));
            }
        }
    }
    seen
}

/// Issue 26: a worker frozen while its agent keeps editing files. Its agent cannot be stopped
/// while the worker itself is frozen (that is the documented limit of shared_fs), but thawed,
/// the worker learns its lease is gone and kills the agent's whole group at once — no
/// SIGTERM grace (a minute here, and the agent ignores SIGTERM).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thawed_worker_kills_the_agent_of_its_lost_lease_at_once() {
    let dir = test_dir("sigstop-kill");
    let db = TestDb::create();
    let env = controller_env(&db.url, &[]);
    let controller = pool::controller(dir.path(), &env).await;
    let base = controller.url();
    let client = reqwest::Client::new();
    let frozen = pool::worker(
        dir.path(),
        "w0",
        &base,
        &[("LOOPD__WORKER__KILL_GRACE_MS", "60000")],
    );
    let file = dir.path().join("scribbles.txt");
    let mode = format!("scribble {}", file.display());
    let repo = Repo::create(dir.path(), "scribbled", 1, &mode, &["reviewer=false"]);
    let id = submit_git(&client, &base, &repo, "scribbled").await;
    let (step, _) = pool::running_step(&client, &base, &id, LONG).await;
    let (shell, child) = wait_for("the first agent to write", LONG, || async {
        scribblers(&file).first().copied()
    })
    .await;

    let _other = pool::worker(dir.path(), "w1", &base, &[]);
    frozen.signal(Signal::SIGSTOP);
    let sid = step["id"].as_str().unwrap().to_string();
    wait_for("the step to be re-leased", LONG, || async {
        let s = pool::steps(&client, &base, &id).await;
        s.into_iter()
            .find(|s| s["id"] == sid.as_str() && s["lease_epoch"].as_i64() > Some(1))
            .map(|_| ())
    })
    .await;
    wait_for("the second agent to write", LONG, || async {
        (scribblers(&file).len() == 2).then_some(())
    })
    .await;
    assert!(
        alive(shell) && alive(child),
        "the frozen worker's agent runs on meanwhile"
    );

    frozen.signal(Signal::SIGCONT);
    // Far less than the kill grace: killed at once, not TERM, a minute, KILL.
    wait_for(
        "the thawed worker to kill its agent's group",
        Duration::from_secs(20),
        || async { (!alive(shell) && !alive(child)).then_some(()) },
    )
    .await;
    let log = frozen.log_text();
    assert!(log.contains("lease lost"), "{log}");
    // Only the new lease's agent writes from now on.
    let from_old = |f: &std::path::Path| {
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(&format!("{shell} ")))
            .count()
    };
    let before = from_old(&file);
    let total = std::fs::read_to_string(&file).unwrap_or_default().len();
    wait_for("the file to grow from the new agent", LONG, || async {
        (std::fs::read_to_string(&file).unwrap_or_default().len() > total + 100).then_some(())
    })
    .await;
    assert_eq!(
        from_old(&file),
        before,
        "the old agent wrote after its death"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_worker_loses_its_step_to_the_other_and_rejoins() {
    let Some(net) = netns::Partition::create() else {
        return; // the reason was printed
    };
    let dir = test_dir("partition");
    let db = TestDb::create();
    // Bound beyond loopback (the veth address), the controller needs a client token.
    const TOKEN: &str = "partition-client-token";
    let env = controller_env(&db.url, &[("LOOPD_AUTH_TOKEN", TOKEN)]);
    let port = free_port();
    let controller = Loopd::spawn_custom(
        &dir.path().join("controller"),
        &net.host_ip,
        port,
        &[],
        &["--role", "controller"],
        &refs(&env),
    );
    controller.wait_ready("/ready").await;
    let base = controller.url();
    let mut auth = reqwest::header::HeaderMap::new();
    auth.insert(
        "Authorization",
        format!("Bearer {TOKEN}").parse().expect("header"),
    );
    let client = reqwest::Client::builder()
        .default_headers(auth)
        .build()
        .expect("client");
    let wrapper = ["ip", "netns", "exec", net.ns.as_str()];
    let inside = Loopd::spawn_custom(
        &dir.path().join("inside"),
        "127.0.0.1",
        free_port(),
        &wrapper,
        &["--role", "worker", "--controller", &base],
        &[
            ("LOOPD_WORKER_JOIN_TOKEN", pool::JOIN),
            ("LOOPD__WORKER__KILL_GRACE_MS", "300"),
        ],
    );
    let repo = Repo::create(dir.path(), "cut", 2, "slow 3", &["reviewer=false"]);
    let id = submit_git(&client, &base, &repo, "cut").await;
    let inside_id = wait_for("the namespaced worker to register", LONG, || async {
        pool::worker_id_of(&inside)
    })
    .await;
    let (step, holder) = pool::running_step(&client, &base, &id, LONG).await;
    assert_eq!(
        holder, inside_id,
        "only the namespaced worker is up, so it holds the step"
    );
    let outside = pool::worker(dir.path(), "outside", &base, &[]);

    net.cut();
    let sid = step["id"].as_str().unwrap().to_string();
    wait_for("the step to move to the other worker", LONG, || async {
        let s = pool::steps(&client, &base, &id).await;
        s.into_iter()
            .find(|s| s["id"] == sid.as_str() && s["lease_epoch"].as_i64() > Some(1))
            .map(|_| ())
    })
    .await;
    net.heal();
    wait_status(&client, &base, &id, "COMPLETED", LONG).await;
    wait_for("the rejoined worker to give up its step", LONG, || async {
        inside.log_text().contains("lease lost").then_some(())
    })
    .await;
    audit(&client, &base, &[id], &[&repo], &["cut"], dir.path(), 2).await;
    drop(outside);
}
