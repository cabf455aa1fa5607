//! The existing daemon's own database (the fixture): every run listed with its steps and
//! events, ids and times kept; its RUNNING run, whose workspace is gone, failed with the
//! reason; its artifact rows listed, their missing files a 404; the copy set aside holds the
//! old database; a second start does nothing more.

use super::support::proc::Loopd;
use super::support::test_dir;
use super::*;
use std::collections::HashMap;

#[derive(QueryableByName)]
struct UpRun {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = BigInt)]
    created_at: i64,
    #[diesel(sql_type = BigInt)]
    updated_at: i64,
}

#[derive(QueryableByName)]
struct UpChild {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    run_id: String,
    #[diesel(sql_type = BigInt)]
    ts: i64,
}

/// The fixture's runs, and its steps, events and artifacts per run (rowid order).
struct Upstream {
    runs: Vec<UpRun>,
    steps: HashMap<String, Vec<UpChild>>,
    events: HashMap<String, Vec<UpChild>>,
    artifacts: HashMap<String, Vec<UpChild>>,
}

fn read_upstream(path: &Path) -> Upstream {
    let mut c = open(path);
    let runs: Vec<UpRun> = diesel::sql_query(
        "SELECT id, name, status, created_at, updated_at FROM runs ORDER BY rowid",
    )
    .load(&mut c)
    .expect("runs");
    let mut group = |sql: &str| {
        let mut m: HashMap<String, Vec<UpChild>> = HashMap::new();
        for r in diesel::sql_query(sql)
            .load::<UpChild>(&mut c)
            .expect("rows")
        {
            m.entry(r.run_id.clone()).or_default().push(r);
        }
        m
    };
    let steps = group("SELECT id, run_id, coalesce(ended_at, 0) AS ts FROM steps ORDER BY rowid");
    let events = group("SELECT id, run_id, ts FROM events ORDER BY rowid");
    let artifacts = group("SELECT id, run_id, 0 AS ts FROM artifacts ORDER BY rowid");
    Upstream {
        runs,
        steps,
        events,
        artifacts,
    }
}

const LANTERN_WS: &str = "/home/user/projects/lantern";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_existing_daemons_database_is_taken_over_with_every_run_step_and_event() {
    assert!(
        !Path::new(LANTERN_WS).exists(),
        "the fixture's workspaces must not exist on this machine"
    );
    let dir = test_dir("takeover-fixture");
    let data = dir.path().join("data");
    let db = install_fixture(&data);
    let up = read_upstream(&fixture_db());
    let daemon = Loopd::spawn(&data, &["--role", "single"], &[]);
    daemon.wait_ready("/ready").await;

    let listed = get_json(&daemon, "/runs").await["runs"]
        .as_array()
        .cloned()
        .expect("runs");
    assert_eq!(listed.len(), up.runs.len());
    for u in &up.runs {
        let r = run(&daemon, &u.id).await;
        assert_eq!(r["name"], u.name.as_str());
        assert_eq!(
            r["created_at"],
            rfc3339(u.created_at).as_str(),
            "{}",
            u.name
        );
        if u.status == "RUNNING" {
            // Its workspace is gone: failed with the reason, as its last event says.
            assert_eq!(r["status"], "FAILED");
            let reason = format!("takeover:workspace_missing:{LANTERN_WS}");
            assert_eq!(r["failure_reason"], reason.as_str());
        } else {
            assert_eq!(r["status"], u.status.as_str(), "{}", u.name);
            assert_eq!(
                r["updated_at"],
                rfc3339(u.updated_at).as_str(),
                "{}",
                u.name
            );
        }

        let st = steps(&daemon, &u.id).await;
        let want: Vec<&str> = up.steps[&u.id].iter().map(|s| s.id.as_str()).collect();
        let got: Vec<&str> = st.iter().filter_map(|s| s["id"].as_str()).collect();
        assert_eq!(got, want, "steps of {} in their order", u.name);
        for (s, us) in st.iter().zip(&up.steps[&u.id]) {
            if s["status"] == "SUCCEEDED" {
                // Upstream's ended_at of a finished step is its end.
                assert_eq!(s["ended_at"], rfc3339(us.ts).as_str());
                assert!(s["started_at"].is_string(), "start from STEP_STARTED: {s}");
            }
        }
        assert!(
            st.iter().all(|s| s["status"] != "IN_PROGRESS"),
            "no step left running: {st:?}"
        );

        let ev = events(&daemon, &u.id).await;
        let want = &up.events[&u.id];
        let kept: Vec<(i64, &str, i64)> = ev
            .iter()
            .take(want.len())
            .map(|(c, e)| {
                (
                    *c,
                    e["id"].as_str().unwrap_or(""),
                    e["timestamp"].as_i64().unwrap_or(0),
                )
            })
            .collect();
        let expected: Vec<(i64, &str, i64)> = want
            .iter()
            .enumerate()
            .map(|(i, e)| (i as i64 + 1, e.id.as_str(), e.ts))
            .collect();
        assert_eq!(kept, expected, "events of {} in their order", u.name);
        let added = ev.len() - want.len();
        if u.status == "RUNNING" {
            assert_eq!(added, 1);
            assert_eq!(ev[want.len()].1["event_type"], "RUN_FAILED");
        } else {
            assert_eq!(added, 0, "{}: {ev:?}", u.name);
        }

        let arts = get_json(&daemon, &format!("/runs/{}/artifacts", u.id)).await["artifacts"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(arts.len(), up.artifacts[&u.id].len(), "{}", u.name);
    }

    // The old daemon's files are not loopd's: listed, but a download is a clear 404.
    let orbit = &up.runs[0].id;
    let url = format!(
        "{}/runs/{orbit}/artifacts/upstream/workspace/iter-01-impl.log",
        daemon.url()
    );
    let r = reqwest::get(&url).await.expect("GET artifact");
    assert_eq!(r.status().as_u16(), 404);
    let body: Value = r.json().await.expect("JSON error");
    assert_eq!(body["code"], "not_found", "{body}");

    // The copy set aside is the old database, whole.
    let set_aside = copies(&db);
    assert_eq!(set_aside.len(), 1, "{set_aside:?}");
    let tables = ["runs", "steps", "events", "artifacts"];
    assert_eq!(dump(&set_aside[0], &tables), dump(&fixture_db(), &tables));
    assert!(
        daemon
            .log_text()
            .contains("took over the existing daemon's database"),
        "the take-over is logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_start_on_a_taken_over_database_does_nothing_more() {
    let dir = test_dir("takeover-again");
    let data = dir.path().join("data");
    let db = install_fixture(&data);
    let mut daemon = Loopd::spawn(&data, &["--role", "single"], &[]);
    daemon.wait_ready("/ready").await;
    stop(&mut daemon).await;
    let first_log = daemon.log_text();
    assert_eq!(first_log.matches("took over").count(), 1, "{first_log}");

    // What the take-over wrote (each start of a single host also registers its local
    // worker, with an event of no run).
    let tables = [
        ("runs", "1"),
        ("run_state", "1"),
        ("steps", "1"),
        ("events", "run_id IS NOT NULL"),
        ("artifacts", "1"),
        ("__diesel_schema_migrations", "1"),
    ];
    let before = dump_where(&db, &tables);
    let set_aside = copies(&db);
    assert_eq!(set_aside.len(), 1);
    let copy_hash = sha256(&set_aside[0]);

    daemon.start();
    daemon.wait_ready("/ready").await;
    let listed = get_json(&daemon, "/runs").await["runs"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(listed, 6);
    stop(&mut daemon).await;

    for ((table, now), (_, then)) in dump_where(&db, &tables).iter().zip(&before) {
        let changed: Vec<(&String, &String)> =
            then.iter().zip(now).filter(|(a, b)| a != b).collect();
        assert!(
            changed.is_empty() && now.len() == then.len(),
            "{table} is as the take-over left it: {changed:?}"
        );
    }
    assert_eq!(copies(&db), set_aside, "no second copy");
    assert_eq!(sha256(&set_aside[0]), copy_hash, "the copy is left alone");
    let log = daemon.log_text();
    assert_eq!(
        log.matches("took over").count(),
        1,
        "taken over once: {log}"
    );
}
