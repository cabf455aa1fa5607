//! Active-active controllers on one database: workers given every controller's URL, runs
//! submitted through one, and the controller a worker talks to killed with SIGKILL in the
//! middle of its steps. The worker moves to the other controller with its step, its lease and
//! its output; the other controller, which never saw it register, knows it from the database.
//! A step queued through one controller wakes a worker long-polling on the other. The
//! controller holding the duties killed: the other takes them over, and nothing is lost or
//! done twice. Both restarted with SIGTERM one after the other: no run lost. Every controller
//! has a data dir of its own: a client tailing a run's output or events through one controller
//! sees, live, what a worker posts through another.

use crate::cluster::{Cluster, Extra, Timings};
use crate::output::{read_until, Collected};
use crate::sse::Reader;
use crate::support::proc::bin;
use crate::support::repo::Repo;
use crate::support::wait_for;
use nix::sys::signal::Signal;
use std::time::Duration;

/// What the controller that takes the duties logs (`actors::peers`).
const DUTIES_TAKEN: &str = "controller duties taken";
/// What a controller stopped with SIGTERM logs once it handed over.
const HANDED_OVER: &str = "handed over: long polls answered, duties released";

/// Each `drip` line of every implementation step's live output exactly once, in order, read
/// through the runs API of `c.controller` (whichever controller the worker wrote through).
async fn assert_output_whole(c: &Cluster, id: &str, steps: &[serde_json::Value], lines: usize) {
    let got = read_all_output(c, &c.url(&format!("/runs/{id}/output"))).await;
    for s in steps.iter().filter(|s| s["phase"] == "implementation") {
        let step = s["id"].as_str().expect("step id");
        let text = got.steps.get(step).cloned().unwrap_or_default();
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

/// The whole output stream of an ended run (no gap, no repeat: [`Collected`] checks).
async fn read_all_output(c: &Cluster, url: &str) -> Collected {
    let mut got = Collected::default();
    let mut r = Reader::open(&c.http, url).await;
    read_until(&mut r, &mut got, |_| false).await;
    got
}

fn holds(got: &Collected, text: &str) -> bool {
    got.steps.values().any(|t| t.contains(text))
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
    assert_output_whole(&c, &id, &steps, 10).await;

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

/// Waits until `log` holds `line`; returns when (for take-over times).
async fn wait_log(l: &crate::support::proc::Loopd, what: &str, line: &str) -> std::time::Instant {
    wait_for(what, Duration::from_secs(30), || async move {
        l.log_text().contains(line).then(std::time::Instant::now)
    })
    .await
}

/// How many lines of `log` hold `line`.
fn count_in_log(l: &crate::support::proc::Loopd, line: &str) -> usize {
    l.log_text().matches(line).count()
}

/// One `loopd_step_dispatch_seconds` figure of a controller's `/metrics`.
async fn dispatch_metric(c: &Cluster, base: &str, series: &str) -> f64 {
    let text = c
        .http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    let name = format!("loopd_step_dispatch_seconds_{series} ");
    text.lines()
        .find_map(|l| l.strip_prefix(name.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in {text}"))
}

/// Every step of every run succeeded once, no lease was taken back, each task committed once
/// and every line of live output is there once.
async fn assert_nothing_lost(c: &Cluster, repos: &[(Repo, String)], tasks: usize, lines: usize) {
    for (repo, id) in repos {
        c.wait_status(id, "COMPLETED").await;
        let steps = c.steps(id).await;
        for s in &steps {
            assert_eq!(s["status"], "SUCCEEDED", "{s}");
            assert_eq!(s["lease_epoch"], 1, "each step leased once: {s}");
            assert_eq!(s["infra_attempts"], 0, "no lease lost: {s}");
        }
        let events = c.events(id).await;
        for lost in ["LEASE_EXPIRED", "LEASE_RELEASED"] {
            assert!(
                !events.iter().any(|e| e["event_type"] == lost),
                "no lease taken back: {events:#?}"
            );
        }
        let mut want = vec!["initial".to_string()];
        want.extend((1..=tasks).map(|i| format!("task {i}: task number {i}")));
        assert_eq!(
            c.bundle_subjects(repo, id).await,
            want,
            "each task's commit exactly once"
        );
        assert_output_whole(c, id, &steps, lines).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_queued_through_one_controller_wakes_a_worker_polling_on_the_other() {
    let mut c = Cluster::start("wake_across", 0, Timings::default()).await;
    let other = c.add_controller().await.url();
    // The worker polls the second controller only; runs go through the first.
    c.add_worker_of(&other, &[], &[]).await;
    for i in 0..3 {
        let repo = Repo::create(c.dir.path(), &format!("origin{i}"), 1, "tick", &[]);
        let id = c.submit_git(&repo, &[]).await;
        c.wait_status(&id, "COMPLETED").await;
    }
    // A claim that waited for its 10 s long poll to end would count above 1 s.
    let count = dispatch_metric(&c, &other, "count").await;
    let within = dispatch_metric(&c, &other, "bucket{le=\"1\"}").await;
    assert!(
        count >= 3.0,
        "the worker claimed through the second: {count}"
    );
    assert_eq!(within, count, "every step dispatched within 1 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_controller_that_holds_the_duties_hands_them_over_and_loses_nothing() {
    let mut c = Cluster::start("kill_duties", 0, Timings::default()).await;
    wait_log(
        &c.controller,
        "the first controller to take the duties",
        DUTIES_TAKEN,
    )
    .await;
    c.add_controller().await;
    let (a, b) = (c.controller.url(), c.others[0].url());
    c.add_worker_of(&format!("{a},{b}"), &[], &[]).await;
    c.add_worker_of(&format!("{a},{b}"), &[], &[]).await;
    c.add_worker_of(&format!("{b},{a}"), &[], &[]).await;
    assert_eq!(count_in_log(&c.others[0], DUTIES_TAKEN), 0, "one holder");
    let mut runs = Vec::new();
    for i in 0..3 {
        let repo = Repo::create(c.dir.path(), &format!("origin{i}"), 3, "drip 10", &[]);
        let id = c.submit_git(&repo, &[]).await;
        runs.push((repo, id));
    }
    for (_, id) in &runs {
        c.wait_step(id, "a step of every run to run", |s| {
            s["phase"] == "implementation" && s["status"] == "IN_PROGRESS"
        })
        .await;
    }

    c.controller.kill9();
    let killed = std::time::Instant::now();
    std::mem::swap(&mut c.controller, &mut c.others[0]);
    let taken = wait_log(
        &c.controller,
        "the survivor to take the duties",
        DUTIES_TAKEN,
    )
    .await;
    let ms = (taken - killed).as_millis();
    eprintln!("duties taken over {ms} ms after the kill");
    assert!(
        ms < 10_000,
        "taken over {ms} ms after the kill (target: 5 s)"
    );

    assert_nothing_lost(&c, &runs, 3, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_restarted_one_after_the_other_lose_no_run() {
    let mut c = Cluster::start("rolling", 0, Timings::default()).await;
    wait_log(
        &c.controller,
        "the first controller to take the duties",
        DUTIES_TAKEN,
    )
    .await;
    c.add_controller().await;
    let urls = c.controller_urls();
    c.add_worker_of(&urls, &[], &[]).await;
    c.add_worker_of(&urls, &[], &[]).await;
    let mut runs = Vec::new();
    for i in 0..2 {
        let repo = Repo::create(c.dir.path(), &format!("origin{i}"), 3, "drip 10", &[]);
        let id = c.submit_git(&repo, &[]).await;
        runs.push((repo, id));
    }
    c.wait_step(&runs[0].1, "a step to run", |s| {
        s["status"] == "IN_PROGRESS"
    })
    .await;
    for round in 0..2 {
        // Stop the one that holds the duties (the first, then the second); the other takes
        // them at once; start it again, and read through the other from now on.
        let before = count_in_log(&c.others[0], DUTIES_TAKEN);
        c.controller.signal(Signal::SIGTERM);
        let status = c.controller.wait_exit(Duration::from_secs(30)).await;
        assert!(status.success(), "round {round}: a clean stop: {status:?}");
        assert!(c.controller.log_text().contains(HANDED_OVER));
        let other = &c.others[0];
        wait_for(
            "the other to take the duties",
            Duration::from_secs(10),
            || async move { (count_in_log(other, DUTIES_TAKEN) > before).then_some(()) },
        )
        .await;
        c.controller.start();
        c.controller.wait_ready("/ready").await;
        std::mem::swap(&mut c.controller, &mut c.others[0]);
    }
    assert_nothing_lost(&c, &runs, 3, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_tails_through_one_controller_what_a_worker_posts_through_the_other() {
    let mut c = Cluster::start("tail_across", 0, Timings::default()).await;
    let b = c.add_controller().await.url();
    let a = c.controller.url();
    // The worker posts through the first only; the client reads through the second, then the
    // first, then the second again (data dirs of their own: only the database is shared).
    c.add_worker_of(&a, &[], &[]).await;
    let repo = Repo::create(c.dir.path(), "origin", 2, "drip8 30", &[]);
    let id = c.submit_git(&repo, &[]).await;
    let events = {
        let (http, url) = (c.http.clone(), format!("{b}/runs/{id}/events"));
        tokio::spawn(async move {
            let mut r = Reader::open(&http, &url).await;
            let mut frames = Vec::new();
            while let Ok(Some(f)) = r.next(Duration::from_secs(60)).await {
                frames.push(f);
            }
            (frames, std::time::Instant::now())
        })
    };
    let (out_a, out_b) = (
        format!("{a}/runs/{id}/output"),
        format!("{b}/runs/{id}/output"),
    );
    let mut got = Collected::default();
    let mut r = Reader::open(&c.http, &out_b).await;
    read_until(&mut r, &mut got, |g| holds(g, "drip line 5 of 30")).await;
    assert!(
        holds(&got, "drip line 5 of 30"),
        "output came through the other"
    );
    let steps = c.steps(&id).await;
    assert_eq!(steps[0]["status"], "IN_PROGRESS", "bytes arrive live");
    assert!(
        !holds(&got, "drip line 30 of 30"),
        "live, not the finished log"
    );

    // A reconnect mid-stream, to the other controller, as EventSource does it.
    drop(r);
    let last = got.cursor.to_string();
    let mut r = Reader::resume(&c.http, &out_a, Some(&last)).await;
    read_until(&mut r, &mut got, |g| holds(g, "drip line 15 of 30")).await;
    drop(r);
    let last = got.cursor.to_string();
    let mut r = Reader::resume(&c.http, &out_b, Some(&last)).await;
    let tail = tokio::spawn(async move {
        read_until(&mut r, &mut got, |_| false).await;
        (got, std::time::Instant::now())
    });

    c.wait_status(&id, "COMPLETED").await;
    let completed = std::time::Instant::now();
    let (got, ended) = tail.await.expect("the tail");
    let (frames, events_ended) = events.await.expect("the events");
    // Both streams through the second end with the run, woken by the first's notices rather
    // than found at their next keep-alive (15 s).
    for (what, at) in [("output", ended), ("events", events_ended)] {
        let late = at.saturating_duration_since(completed);
        assert!(
            late < Duration::from_secs(5),
            "the {what} stream ended {late:?} after the run"
        );
    }

    // Identical bytes: each step's streamed output is its log.
    let stored = c.artifacts(&id).await;
    let steps = c.steps(&id).await;
    for s in &steps {
        let name = s["output_path"].as_str().unwrap_or_default();
        let log = if stored.iter().any(|a| a["name"] == name) {
            String::from_utf8(c.download(&id, name).await).expect("UTF-8 log")
        } else {
            String::new()
        };
        let sid = s["id"].as_str().expect("id");
        let streamed = got.steps.get(sid).cloned().unwrap_or_default();
        assert_eq!(streamed, log, "step {sid}: the stream equals its log");
    }
    assert!(holds(&got, "drip line 30 of 30"));
    // The whole stream again through either controller: the same.
    for url in [&out_a, &out_b] {
        assert_eq!(read_all_output(&c, url).await.steps, got.steps, "{url}");
    }
    // The events through the second are those through the first.
    let ids = |v: Vec<serde_json::Value>| -> Vec<String> {
        v.iter()
            .map(|e| e["id"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let via_b: Vec<serde_json::Value> = frames
        .iter()
        .map(|f| serde_json::from_str(&f.data).expect("event JSON"))
        .collect();
    assert_eq!(ids(via_b), ids(c.events(&id).await), "the same events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controllers_racing_to_prepare_and_finish_runs_do_each_once() {
    // The duties' holder looks for runs to prepare or finish every 20 ms, while the other
    // controller, which started them and took their last completions, is preparing and
    // finishing them: both try at once.
    let extra = Extra {
        controller_env: vec![("LOOPD__SCHEDULER__TICK_INTERVAL_MS".into(), "20".into())],
        ..Extra::default()
    };
    let mut c = Cluster::start_with("finish_race", 0, Timings::default(), &extra).await;
    wait_log(&c.controller, "the first to take the duties", DUTIES_TAKEN).await;
    let other = c.add_controller().await.url();
    c.add_worker_of(&other, &[], &[]).await;
    c.add_worker_of(&other, &[], &[]).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        let repo = Repo::create(c.dir.path(), &format!("origin{i}"), 1, "tick", &[]);
        ids.push((c.submit_git(&repo, &[]).await, false));
    }
    // shared_fs runs submitted through the other: it starts them and makes their worktrees.
    for i in 0..4 {
        let repo = Repo::create(c.dir.path(), &format!("ws{i}"), 1, "tick", &[]);
        let body = serde_json::json!({
            "spec_path": "specs/demo.md",
            "plan_path": "PLAN.md",
            "workspace_root": crate::cluster::path_str(&repo.path),
        });
        let resp = c
            .http
            .post(format!("{other}/runs"))
            .json(&body)
            .send()
            .await
            .expect("POST /runs");
        assert_eq!(resp.status().as_u16(), 201);
        let v: serde_json::Value = resp.json().await.expect("JSON");
        ids.push((v["run"]["id"].as_str().expect("id").to_string(), true));
    }
    for (id, shared) in &ids {
        c.wait_status(id, "COMPLETED").await;
        let events = c.events(id).await;
        let count = |t: &str, name: Option<&str>| {
            events
                .iter()
                .filter(|e| e["event_type"] == t)
                .filter(|e| name.is_none_or(|n| e["payload"]["name"] == n))
                .count()
        };
        assert_eq!(count("RUN_COMPLETED", None), 1, "{events:#?}");
        let mut stored = vec!["report.tsv", "summary.json"];
        if !shared {
            stored.push("run.bundle");
        }
        for name in stored {
            assert_eq!(
                count("ARTIFACT_STORED", Some(name)),
                1,
                "run {id}: {name} stored once: {events:#?}"
            );
        }
        if *shared {
            assert_eq!(
                count("WORKTREE_CREATED", None),
                1,
                "run {id}: one worktree: {events:#?}"
            );
        }
    }
}
