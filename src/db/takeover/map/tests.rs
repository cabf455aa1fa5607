//! Unit tests of the row mapping from the existing daemon's tables to loopd's.

use super::*;

const RUN: &str = "01a24c02-fdd5-76c3-94dc-5c4eded661b2";

fn run(status: &str) -> UpRun {
    UpRun {
        id: RUN.into(),
        name: "lantern".into(),
        name_source: "spec_slug".into(),
        status: status.into(),
        workspace_root: "/ws".into(),
        spec_path: "/ws/specs/demo.md".into(),
        base_branch: Some("main".into()),
        run_branch: Some("run/lantern".into()),
        merge_strategy: Some("none".into()),
        worktree_path: Some("/ws.run-lantern".into()),
        created_at: 1_000,
        updated_at: 2_000,
        review_status: Some("pending".into()),
        ..Default::default()
    }
}

fn step(id: &str, phase: &str, status: &str, ended_at: i64) -> UpStep {
    UpStep {
        id: id.into(),
        run_id: RUN.into(),
        phase: phase.into(),
        status: status.into(),
        attempt: 1,
        ended_at: Some(ended_at),
        exit_code: (status == "SUCCEEDED").then_some(0),
        ..Default::default()
    }
}

fn event(id: &str, kind: &str, step_id: Option<&str>, ts: i64) -> UpEvent {
    UpEvent {
        id: id.into(),
        run_id: RUN.into(),
        step_id: step_id.map(str::to_string),
        event_type: kind.into(),
        ts,
        payload_json: "{}".into(),
    }
}

fn up(status: &str, steps: Vec<UpStep>, events: Vec<UpEvent>) -> Upstream {
    Upstream {
        runs: vec![run(status)],
        steps,
        events,
        artifacts: Vec::new(),
    }
}

const NOW: i64 = 9_000;

#[test]
fn a_running_run_with_its_workspace_starts_again_and_its_interrupted_step_is_closed() {
    let u = up(
        "RUNNING",
        vec![
            step("s1", "implementation", "SUCCEEDED", 1_500),
            step("s2", "verification", "FAILED", 1_600),
            step("s3", "implementation", "IN_PROGRESS", 1_700),
        ],
        vec![
            event("e1", "STEP_STARTED", Some("s1"), 1_100),
            event("e2", "STEP_STARTED", Some("s3"), 1_650),
        ],
    );
    let m = map(&u, NOW, &|ws| ws == "/ws");
    assert_eq!(m.restarted, [RUN]);
    let r = &m.runs[0];
    assert_eq!((r.status.as_str(), r.updated_at), ("PENDING", NOW));
    assert_eq!(r.created_at, 1_000, "created_at kept");
    let s: Vec<(&str, i32, &str, bool)> = m
        .steps
        .iter()
        .map(|s| (s.id.as_str(), s.seq, s.status.as_str(), s.settled))
        .collect();
    assert_eq!(
        s,
        [
            ("s1", 1, "SUCCEEDED", true),
            ("s2", 2, "FAILED", true),
            ("s3", 3, "CANCELED", true)
        ]
    );
    let interrupted = &m.steps[2];
    assert_eq!(interrupted.failure_reason.as_deref(), Some(INTERRUPTED));
    assert_eq!(interrupted.started_at, Some(1_650));
    assert_eq!(interrupted.ended_at, None);
    assert_eq!(m.steps[0].started_at, Some(1_100), "from STEP_STARTED");
    assert_eq!(m.steps[0].ended_at, Some(1_500));
    assert_eq!(m.steps[1].started_at, None, "no start recorded");
    let st = &m.states[0];
    assert_eq!((st.iterations_done, st.verify_failures), (1, 1));
    assert_eq!(st.event_seq, 2);
    assert!(m.failed.is_empty());
}

#[test]
fn a_running_run_whose_workspace_is_gone_fails_with_the_reason_as_its_last_event() {
    let u = up(
        "RUNNING",
        vec![step("s1", "implementation", "IN_PROGRESS", 1_700)],
        vec![
            event("e1", "WORKTREE_CREATED", None, 1_600),
            event("e2", "STEP_STARTED", Some("s1"), 1_700),
        ],
    );
    let m = map(&u, NOW, &|_| false);
    let reason = "takeover:workspace_missing:/ws";
    assert_eq!(m.failed, [(RUN.to_string(), reason.to_string())]);
    let r = &m.runs[0];
    assert_eq!(r.status, "FAILED");
    assert_eq!(r.failure_reason.as_deref(), Some(reason));
    assert_eq!((r.ended_at, r.started_at), (Some(NOW), Some(1_600)));
    let last = m.events.last().expect("events");
    assert_eq!(
        (last.event_type.as_str(), last.run_seq),
        ("RUN_FAILED", Some(3))
    );
    let p: Value = serde_json::from_str(&last.payload_json).expect("json");
    assert_eq!(p["reason"], reason);
    assert_eq!(m.states[0].event_seq, 3);
    assert_eq!(m.steps[0].status, "CANCELED");
}

#[test]
fn a_paused_run_keeps_its_last_step_to_decide_on_when_resumed() {
    let u = up(
        "PAUSED",
        vec![
            step("s1", "implementation", "SUCCEEDED", 1_500),
            step("s2", "verification", "SUCCEEDED", 1_600),
        ],
        vec![],
    );
    let m = map(&u, NOW, &|_| true);
    assert_eq!(m.runs[0].status, "PAUSED");
    assert_eq!(m.runs[0].updated_at, 2_000, "untouched");
    assert!(m.steps[0].settled);
    assert!(!m.steps[1].settled, "decided on when resumed");

    let interrupted = up(
        "PAUSED",
        vec![step("s1", "implementation", "IN_PROGRESS", 1_500)],
        vec![],
    );
    let m = map(&interrupted, NOW, &|_| true);
    assert_eq!(m.runs[0].status, "FAILED");
    assert_eq!(
        m.runs[0].failure_reason.as_deref(),
        Some("takeover:interrupted_while_paused")
    );
    let only = &m.events[0];
    assert_eq!(
        (only.event_type.as_str(), only.run_seq),
        ("RUN_FAILED", Some(1))
    );
}

#[test]
fn ended_runs_keep_their_state_and_events_keep_insertion_order() {
    let mut failed = event("e3", "RUN_FAILED", None, 1_000);
    failed.payload_json = r#"{"run_id":"x","reason":"iteration_limit_reached:1"}"#.into();
    let u = up(
        "FAILED",
        vec![step("s1", "implementation", "SUCCEEDED", 1_500)],
        vec![
            event("e1", "STEP_STARTED", Some("s1"), 1_400),
            // An earlier timestamp inserted later (a clock step): order stays insertion order.
            event("e2", "STEP_FINISHED", Some("s1"), 1_300),
            failed,
        ],
    );
    let m = map(&u, NOW, &|_| false);
    let r = &m.runs[0];
    assert_eq!((r.status.as_str(), r.updated_at), ("FAILED", 2_000));
    assert_eq!(
        r.failure_reason.as_deref(),
        Some("iteration_limit_reached:1")
    );
    assert_eq!(r.ended_at, Some(1_000), "the terminal event's time");
    let ev: Vec<(&str, Option<i64>, i64)> = m
        .events
        .iter()
        .map(|e| (e.id.as_str(), e.run_seq, e.created_at))
        .collect();
    assert_eq!(
        ev,
        [
            ("e1", Some(1), 1_400),
            ("e2", Some(2), 1_300),
            ("e3", Some(3), 1_000)
        ]
    );
    assert!(m.failed.is_empty() && m.restarted.is_empty());
}

#[test]
fn artifacts_stay_listed_under_unique_names_with_keys_that_hold_no_object() {
    let mut u = up(
        "COMPLETED",
        vec![step("s1", "implementation", "SUCCEEDED", 1)],
        vec![],
    );
    u.steps[0].output_path = Some("/ws/logs/loop/run-x/iter-01-impl.log".into());
    let art = |id: &str, kind: &str, loc: &str, path: &str| UpArtifact {
        id: id.into(),
        run_id: RUN.into(),
        kind: kind.into(),
        location: loc.into(),
        path: path.into(),
        checksum: Some("ab".into()),
    };
    u.artifacts = vec![
        art(
            "01a24c02-e0c0-7be1-a479-0474cae3e09e",
            "prompt",
            "workspace",
            "/ws/logs/loop/run-x/prompt.txt",
        ),
        art(
            "a2",
            "prompt",
            "workspace",
            "/ws/logs/loop/run-x/prompt.txt",
        ),
        art(
            "a3",
            "prompt",
            "global",
            "/home/u/.local/share/loopd/runs/run-x/prompt.txt",
        ),
        art(
            "a4",
            "implementation_output",
            "workspace",
            "/ws/logs/loop/run-x/iter-01-impl.log",
        ),
        art("a5", "weird", "workspace", "/ws/../x/.."),
    ];
    let m = map(&u, NOW, &|_| true);
    let names: Vec<&str> = m.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "upstream/workspace/prompt.1.txt",
            "upstream/workspace/prompt.2.txt",
            "upstream/global/prompt.txt",
            "upstream/workspace/iter-01-impl.log",
            "upstream/a5",
        ]
    );
    let first = &m.artifacts[0];
    // The UUIDv7 id's time (the fixture's clock, December 2026).
    assert_eq!(first.created_at, 1_796_571_586_752);
    assert_eq!(
        m.artifacts[1].created_at, 1_000,
        "not a v7 id: the run's creation"
    );
    assert_eq!(
        first.object_key,
        format!("runs/{RUN}/upstream-loopd/workspace/ws/logs/loop/run-x/prompt.txt")
    );
    assert_eq!(
        m.artifacts[4].object_key,
        format!("runs/{RUN}/upstream-loopd/a5")
    );
    assert!(m.artifacts.iter().all(|a| a.store == UPSTREAM_STORE));
    assert_eq!(m.artifacts[3].step_id.as_deref(), Some("s1"));
    assert_eq!(
        (first.sha256.as_str(), first.kind.as_str()),
        ("ab", "prompt")
    );
}

#[test]
fn the_configuration_becomes_loopds_and_keeps_what_loopd_does_not_know() {
    let upstream = r#"{"model":"opus","iterations":20,"reviewer":false,"verify_cmds":["test -d specs"],
        "review_model":null,"artifact_mode":"mirror","global_log_dir":"/home/u/.local/share/loopd",
        "skills_dirs":[".agent/skills"],"max_consecutive_review_failures":0,"claude_retries":"many"}"#;
    let (json, warnings) = config(Some(upstream));
    let v: Value = serde_json::from_str(&json.expect("config")).expect("json");
    let c: RunConfig = serde_json::from_value(v.clone()).expect("loopd reads it");
    assert_eq!((c.iterations, c.reviewer), (20, false));
    assert_eq!(c.verify_cmds, ["test -d specs"]);
    assert_eq!(c.max_consecutive_review_failures, 0);
    assert_eq!(c.agent_cmd, RunConfig::default().agent_cmd);
    assert_eq!(c.claude_retries, 0, "an unreadable value keeps the default");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(v["global_log_dir"], "/home/u/.local/share/loopd");
    assert_eq!(v["artifact_mode"], "mirror");
}
