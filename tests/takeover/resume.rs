//! A database of the existing daemon made on the spot, as a real installation leaves it: WAL
//! mode with everything still in the `-wal` (nothing checkpointed), and a run it left RUNNING
//! in the middle of its first step, in a real git workspace with its worktree. loopd takes it
//! over (the copy holds the run too), starts the run again in the same worktree with the
//! agent the run was configured with (`claude`, a stand-in on PATH) and completes it.

use super::support::proc::Loopd;
use super::support::repo::Repo;
use super::support::{fake_agent, test_dir};
use super::*;
use diesel::connection::SimpleConnection;

fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[derive(QueryableByName)]
struct Config {
    #[diesel(sql_type = Text)]
    config_json: String,
}

/// The configuration the existing daemon stored for the fixture's lantern run, moved to
/// `ws` (iterations 20, no reviewer, `verify_cmds = test -d specs`, no agent command: claude).
fn upstream_config(ws: &Path, home: &Path) -> String {
    let mut c = open(&fixture_db());
    let row: Config = diesel::sql_query("SELECT config_json FROM runs WHERE name = 'lantern'")
        .get_result(&mut c)
        .expect("lantern's config");
    row.config_json
        .replace("/home/user/projects/lantern", &ws.to_string_lossy())
        .replace("/home/user", &home.to_string_lossy())
}

/// An executable `claude` in `bin` that records its arguments and runs the fake agent.
fn stand_in_claude(bin: &Path, calls: &Path) {
    std::fs::create_dir_all(bin).expect("bin dir");
    let script = format!(
        "#!/bin/sh\necho \"$*\" >> '{}'\nexec sh '{}' tick \"$@\"\n",
        calls.display(),
        fake_agent()
    );
    let path = bin.join("claude");
    std::fs::write(&path, script).expect("claude");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_the_existing_daemon_left_running_resumes_and_completes_after_the_take_over() {
    let dir = test_dir("takeover-resume");
    let root = dir.path();
    let repo = Repo::create(root, "ws", 2, "tick", &[]);
    let ws = repo.path.canonicalize().expect("ws");
    // The existing daemon had made the run's branch and worktree.
    let worktree = ws.with_file_name("ws.run-lantern");
    repo.git(&["branch", "run/lantern", "main"]);
    repo.git(&[
        "worktree",
        "add",
        &worktree.to_string_lossy(),
        "run/lantern",
    ]);

    let id = uuid::Uuid::now_v7().to_string();
    let step = uuid::Uuid::now_v7().to_string();
    let t = chrono::Utc::now().timestamp_millis() - 60_000;
    let logs = ws.join(format!("logs/loop/run-{id}"));
    let rows = format!(
        "INSERT INTO runs VALUES ({id}, 'lantern', 'spec_slug', 'RUNNING', {ws}, {spec}, {plan}, \
           'main', 'run/lantern', NULL, 'none', {wt}, {config}, {t}, {t1}, 'git', NULL, NULL, \
           'pending', NULL, NULL, NULL);
         INSERT INTO steps VALUES ({step}, {id}, 'implementation', 'IN_PROGRESS', 1, NULL, {t2}, \
           NULL, NULL, NULL);
         INSERT INTO events VALUES ({e1}, {id}, NULL, 'WORKTREE_PROVIDER_SELECTED', {t}, \
           {p1});
         INSERT INTO events VALUES ({e2}, {id}, NULL, 'WORKTREE_CREATED', {t1}, {p2});
         INSERT INTO events VALUES ({e3}, {id}, {step}, 'STEP_STARTED', {t2}, {p3});
         INSERT INTO artifacts VALUES ({a1}, {id}, 'prompt', 'workspace', {prompt}, 'ab');",
        id = q(&id),
        step = q(&step),
        ws = q(&ws.to_string_lossy()),
        spec = q(&ws.join("specs/demo.md").to_string_lossy()),
        plan = q(&ws.join("PLAN.md").to_string_lossy()),
        wt = q(&worktree.to_string_lossy()),
        config = q(&upstream_config(&ws, root)),
        t1 = t + 40,
        t2 = t + 50,
        e1 = q(&uuid::Uuid::now_v7().to_string()),
        e2 = q(&uuid::Uuid::now_v7().to_string()),
        e3 = q(&uuid::Uuid::now_v7().to_string()),
        a1 = q(&uuid::Uuid::now_v7().to_string()),
        p1 = q(&format!(r#"{{"run_id":"{id}","provider":"git"}}"#)),
        p2 = q(&format!(
            r#"{{"run_id":"{id}","provider":"git","worktree_path":"{}","run_branch":"run/lantern"}}"#,
            worktree.display()
        )),
        p3 = q(&format!(
            r#"{{"step_id":"{step}","phase":"implementation","attempt":1}}"#
        )),
        prompt = q(&logs.join("prompt.txt").to_string_lossy()),
    );

    // Written in WAL mode and never checkpointed: the main file holds nothing yet. The files
    // are copied while the writer is still open, as a daemon that was killed leaves them.
    let staging = root.join("staging");
    std::fs::create_dir_all(&staging).expect("staging");
    let data = root.join("data");
    std::fs::create_dir_all(&data).expect("data");
    let db = data.join("loopd.db");
    {
        let mut w = open(&staging.join("loopd.db"));
        w.batch_execute("PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;")
            .expect("wal");
        w.batch_execute(&upstream_schema())
            .expect("upstream schema");
        w.batch_execute(&rows).expect("upstream rows");
        std::fs::copy(staging.join("loopd.db"), &db).expect("copy db");
        std::fs::copy(staging.join("loopd.db-wal"), data.join("loopd.db-wal")).expect("copy wal");
    }
    let main_only = root.join("main-only.db");
    std::fs::copy(&db, &main_only).expect("copy main file");
    assert_eq!(
        count(
            &mut open(&main_only),
            "SELECT count(*) AS n FROM sqlite_master"
        ),
        0,
        "everything is in the -wal"
    );

    let bin = root.join("bin");
    let calls = root.join("claude-calls.log");
    stand_in_claude(&bin, &calls);
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let daemon = Loopd::spawn(
        &data,
        &["--role", "single"],
        &[
            ("PATH", path.as_str()),
            ("LOOPD__SCHEDULER__TICK_INTERVAL_MS", "100"),
        ],
    );
    daemon.wait_ready("/ready").await;

    // The copy set aside holds what only the -wal held.
    let set_aside = copies(&db);
    assert_eq!(set_aside.len(), 1);
    let running = count(
        &mut open(&set_aside[0]),
        "SELECT count(*) AS n FROM runs WHERE status = 'RUNNING'",
    );
    assert_eq!(running, 1, "the copy is the old database with its -wal");

    let done = wait_status(&daemon, &id, "COMPLETED").await;
    assert_eq!(done["created_at"], rfc3339(t).as_str());
    assert_eq!(
        done["worktree"]["worktree_path"],
        worktree.to_string_lossy().as_ref(),
        "the old worktree is reused"
    );
    assert_eq!(
        repo.subjects("run/lantern"),
        ["initial", "task 1: task number 1", "task 2: task number 2"]
    );
    let st = steps(&daemon, &id).await;
    assert_eq!(st[0]["id"], step.as_str(), "the old step is kept first");
    assert_eq!(st[0]["status"], "CANCELED");
    assert!(
        st[0]["failure_reason"]
            .as_str()
            .is_some_and(|r| r.contains("interrupted")),
        "{}",
        st[0]
    );
    assert!(st[1..].iter().all(|s| s["status"] == "SUCCEEDED"), "{st:?}");
    let calls = std::fs::read_to_string(&calls).expect("claude was run");
    assert!(
        calls.lines().count() >= 3 && calls.contains("--model opus"),
        "the run's own agent command: {calls}"
    );

    let ev = events(&daemon, &id).await;
    let old: Vec<(i64, &str)> = ev
        .iter()
        .take(3)
        .map(|(c, e)| (*c, e["event_type"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        old,
        [
            (1, "WORKTREE_PROVIDER_SELECTED"),
            (2, "WORKTREE_CREATED"),
            (3, "STEP_STARTED")
        ]
    );
    assert_eq!(ev[3].1["event_type"], "RUN_STARTED", "{ev:?}");
    assert_eq!(
        ev.last().map(|(_, e)| e["event_type"].clone()),
        Some(Value::from("RUN_COMPLETED"))
    );
}
