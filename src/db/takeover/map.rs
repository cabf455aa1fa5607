//! The existing daemon's records as loopd's rows: every run, step, event and artifact keeps
//! its id and its timestamps. Pure (the one question about the world, whether a workspace
//! still exists, is asked through a function); used by the take-over only.
//!
//! - Steps are numbered per run in the order they were inserted; a step's start comes from its
//!   `STEP_STARTED` event (upstream's `started_at` is always NULL and its `ended_at` holds the
//!   start while the step runs). A step still QUEUED/IN_PROGRESS was interrupted: CANCELED.
//! - Events are numbered per run (loopd's cursor) in the order they were inserted; payloads are
//!   kept as they are (loopd's events carry the same fields).
//! - Artifacts stay listed under `upstream/<location>/<file name>`; their files belong to the
//!   old daemon and are not in loopd's store, so their key (`runs/<run>/upstream-loopd/
//!   <location><original path>`, the original path kept there) has no object: a download is a
//!   404, never a 500.
//! - A RUNNING run is started again like a retried run (PENDING, within loopd's caps, its
//!   worktree reused), or FAILED `takeover:workspace_missing:<path>` when its workspace is gone.
//!   A PAUSED run keeps its last finished step to be decided on when resumed; one paused with
//!   a step interrupted is FAILED `takeover:interrupted_while_paused` (retry starts it again).
//! - The configuration becomes loopd's (`RunConfig`), keeping the keys loopd does not know.

use super::upstream::{UpArtifact, UpEvent, UpRun, UpStep, Upstream};
use crate::db::models::{new_id, ArtifactRow, EventRow, RunRow, RunStateRow, StepRow};
use crate::domain::events as ev;
use crate::domain::run_config::RunConfig;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// Why an interrupted step of a run that goes on was stopped.
pub const INTERRUPTED: &str = "interrupted: the existing daemon stopped during this step";
/// Store name of the artifacts whose files the old daemon kept (none is in loopd's store).
pub const UPSTREAM_STORE: &str = "upstream";

/// loopd's rows, ready to insert, and what the take-over did to runs that were going on.
#[derive(Debug, Default)]
pub struct Mapped {
    pub runs: Vec<RunRow>,
    pub states: Vec<RunStateRow>,
    pub steps: Vec<StepRow>,
    pub events: Vec<EventRow>,
    pub artifacts: Vec<ArtifactRow>,
    /// RUNNING runs queued to start again.
    pub restarted: Vec<String>,
    /// Runs failed by the take-over, with the reason.
    pub failed: Vec<(String, String)>,
    /// Configuration keys that could not be read (run id, message).
    pub config_warnings: Vec<(String, String)>,
}

/// What becomes of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fate {
    Keep,
    Restart,
    Fail(String),
}

fn is_active(status: &str) -> bool {
    matches!(status, "QUEUED" | "IN_PROGRESS" | "RETRYING")
}

fn is_terminal(status: &str) -> bool {
    matches!(status, "COMPLETED" | "FAILED" | "CANCELED")
}

/// Groups rows by run id, keeping their order.
fn by_run<T>(rows: &[T], run_id: fn(&T) -> &str) -> HashMap<&str, Vec<&T>> {
    let mut m: HashMap<&str, Vec<&T>> = HashMap::new();
    for r in rows {
        m.entry(run_id(r)).or_default().push(r);
    }
    m
}

/// The groups of [`by_run`] in the order each run id first appears.
fn ordered<'a, T>(
    rows: &'a [T],
    groups: &HashMap<&'a str, Vec<&'a T>>,
    run_id: fn(&T) -> &str,
) -> Vec<(&'a str, Vec<&'a T>)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for r in rows {
        let id = run_id(r);
        if seen.insert(id) {
            if let Some((k, v)) = groups.get_key_value(id) {
                out.push((*k, v.clone()));
            }
        }
    }
    out
}

/// Maps everything; `now` stamps what the take-over itself changes.
pub fn map(up: &Upstream, now: i64, workspace_exists: &dyn Fn(&str) -> bool) -> Mapped {
    let steps_of = by_run(&up.steps, |s| s.run_id.as_str());
    let events_of = by_run(&up.events, |e| e.run_id.as_str());
    let no_steps = Vec::new();
    let no_events = Vec::new();
    let mut out = Mapped::default();
    let mut fates: HashMap<&str, Fate> = HashMap::new();
    for run in &up.runs {
        let steps = steps_of.get(run.id.as_str()).unwrap_or(&no_steps);
        let events = events_of.get(run.id.as_str()).unwrap_or(&no_events);
        let fate = fate(run, steps, workspace_exists);
        let (row, warnings) = run_row(run, events, &fate, now);
        out.config_warnings
            .extend(warnings.into_iter().map(|w| (run.id.clone(), w)));
        match &fate {
            Fate::Restart => out.restarted.push(run.id.clone()),
            Fate::Fail(reason) => out.failed.push((run.id.clone(), reason.clone())),
            Fate::Keep => {}
        }
        out.states.push(state_row(run, steps, events));
        out.runs.push(row);
        fates.insert(run.id.as_str(), fate);
    }
    let status_of: HashMap<&str, &str> = up
        .runs
        .iter()
        .map(|r| (r.id.as_str(), r.status.as_str()))
        .collect();
    let starts = step_starts(&up.events);
    let created_of: HashMap<&str, i64> = up
        .runs
        .iter()
        .map(|r| (r.id.as_str(), r.created_at))
        .collect();
    for (run_id, steps) in ordered(&up.steps, &steps_of, |s| s.run_id.as_str()) {
        let fate = fates.get(run_id).cloned().unwrap_or(Fate::Keep);
        let status = status_of.get(run_id).copied().unwrap_or("");
        let created = created_of.get(run_id).copied().unwrap_or(0);
        let n = steps.len();
        for (i, s) in steps.iter().enumerate() {
            let last = i + 1 == n;
            // A paused run that goes on decides, when resumed, what follows its last step.
            let decide_later = fate == Fate::Keep && status == "PAUSED" && last;
            out.steps.push(step_row(
                s,
                i as i32 + 1,
                status,
                decide_later,
                starts.get(s.id.as_str()).copied(),
                created,
            ));
        }
    }
    for (run_id, events) in ordered(&up.events, &events_of, |e| e.run_id.as_str()) {
        let mut seq = 0;
        for e in events {
            seq += 1;
            out.events.push(event_row(e, seq));
        }
        if let Some(Fate::Fail(reason)) = fates.get(run_id) {
            seq += 1;
            out.events.push(EventRow {
                id: new_id(),
                run_id: Some(run_id.to_string()),
                run_seq: Some(seq),
                step_id: None,
                event_type: ev::RUN_FAILED.into(),
                payload_json: ev::run_failed(run_id, reason).to_string(),
                created_at: now,
            });
        }
    }
    // A run whose only event is the take-over's RUN_FAILED.
    for (run_id, reason) in &out.failed {
        if !events_of.contains_key(run_id.as_str()) {
            out.events.push(EventRow {
                id: new_id(),
                run_id: Some(run_id.clone()),
                run_seq: Some(1),
                step_id: None,
                event_type: ev::RUN_FAILED.into(),
                payload_json: ev::run_failed(run_id, reason).to_string(),
                created_at: now,
            });
        }
    }
    let event_counts = count_by_run(&out.events);
    for st in &mut out.states {
        st.event_seq = event_counts.get(st.run_id.as_str()).copied().unwrap_or(0);
    }
    out.artifacts = artifact_rows(up);
    out
}

fn count_by_run(events: &[EventRow]) -> HashMap<&str, i64> {
    let mut m = HashMap::new();
    for e in events {
        if let Some(r) = e.run_id.as_deref() {
            *m.entry(r).or_insert(0) += 1;
        }
    }
    m
}

fn fate(run: &UpRun, steps: &[&UpStep], workspace_exists: &dyn Fn(&str) -> bool) -> Fate {
    match run.status.as_str() {
        "RUNNING" if workspace_exists(&run.workspace_root) => Fate::Restart,
        "RUNNING" => Fate::Fail(format!("takeover:workspace_missing:{}", run.workspace_root)),
        "PAUSED" if steps.iter().any(|s| is_active(&s.status)) => {
            Fate::Fail("takeover:interrupted_while_paused".into())
        }
        _ => Fate::Keep,
    }
}

/// The time of each step's first STEP_STARTED event.
fn step_starts(events: &[UpEvent]) -> HashMap<&str, i64> {
    let mut m = HashMap::new();
    for e in events.iter().filter(|e| e.event_type == ev::STEP_STARTED) {
        if let Some(id) = e.step_id.as_deref() {
            m.entry(id).or_insert(e.ts);
        }
    }
    m
}

fn payload(e: &UpEvent) -> Value {
    serde_json::from_str(&e.payload_json).unwrap_or(Value::Null)
}

fn run_row(run: &UpRun, events: &[&UpEvent], fate: &Fate, now: i64) -> (RunRow, Vec<String>) {
    let (config_json, warnings) = config(run.config_json.as_deref());
    let terminal_event = events.iter().rev().find(|e| ev::is_terminal(&e.event_type));
    let upstream_reason = events
        .iter()
        .rev()
        .find(|e| e.event_type == ev::RUN_FAILED)
        .and_then(|e| payload(e)["reason"].as_str().map(str::to_string));
    let (status, failure_reason, ended_at, updated_at) = match fate {
        Fate::Keep => (
            run.status.clone(),
            (run.status == "FAILED")
                .then_some(upstream_reason)
                .flatten(),
            is_terminal(&run.status).then(|| terminal_event.map_or(run.updated_at, |e| e.ts)),
            run.updated_at,
        ),
        Fate::Restart => ("PENDING".to_string(), None, None, now),
        Fate::Fail(reason) => ("FAILED".to_string(), Some(reason.clone()), Some(now), now),
    };
    let row = RunRow {
        id: run.id.clone(),
        name: run.name.clone(),
        name_source: run.name_source.clone(),
        status,
        workspace_root: run.workspace_root.clone(),
        spec_path: run.spec_path.clone(),
        plan_path: run.plan_path.clone(),
        worktree_json: worktree_json(run),
        worktree_cleanup_status: run.worktree_cleanup_status.clone(),
        worktree_cleaned_at: run.worktree_cleaned_at,
        config_json,
        created_at: run.created_at,
        updated_at,
        review_status: run
            .review_status
            .clone()
            .unwrap_or_else(|| "pending".into()),
        review_action_at: run.review_action_at,
        pr_url: run.pr_url.clone(),
        merge_commit: run.merge_commit.clone(),
        workspace_source: "shared_fs".into(),
        repo_url: None,
        repo_ref: None,
        artifact_store: "fs".into(),
        labels: String::new(),
        waiting_reason: None,
        failure_reason,
        // Upstream records no RUN_STARTED: its first event is the start of processing.
        started_at: events.first().map(|e| e.ts),
        ended_at,
        pushed_branch: None,
        pushed_commit: None,
        run_branch: None,
    };
    (row, warnings)
}

/// loopd's `RunWorktree` (API.md), when the old run had a worktree.
fn worktree_json(run: &UpRun) -> Option<String> {
    let (path, branch) = (run.worktree_path.as_ref()?, run.run_branch.as_ref()?);
    let w = json!({
        "base_branch": run.base_branch.clone().unwrap_or_default(),
        "run_branch": branch,
        "merge_target_branch": run.merge_target_branch,
        "merge_strategy": run.merge_strategy.as_deref().unwrap_or("none"),
        "worktree_path": path,
        "provider": "git",
    });
    Some(w.to_string())
}

/// The run's configuration in loopd's form, with the keys loopd does not know kept (a later
/// loopd may read them); values loopd cannot read are left at loopd's default and reported.
fn config(upstream: Option<&str>) -> (Option<String>, Vec<String>) {
    let mut warnings = Vec::new();
    let obj: Map<String, Value> = match upstream.map(serde_json::from_str::<Value>) {
        Some(Ok(Value::Object(o))) => o,
        Some(_) => {
            warnings.push("config_json is not a JSON object: loopd's defaults used".into());
            Map::new()
        }
        None => Map::new(),
    };
    let mut c = RunConfig::default();
    for (k, v) in &obj {
        let one = Map::from_iter([(k.clone(), v.clone())]);
        if let Err(e) = c.apply_json(&one) {
            warnings.push(e.to_string());
        }
    }
    let mut merged = match serde_json::to_value(&c) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    for (k, v) in obj {
        merged.entry(k).or_insert(v);
    }
    (Some(Value::Object(merged).to_string()), warnings)
}

/// loopd's counters, as loopd would have kept them (the old daemon rebuilt the failures in a
/// row from the steps at each start): implementation steps run, failures in a row, watchdog
/// rewrites.
fn state_row(run: &UpRun, steps: &[&UpStep], events: &[&UpEvent]) -> RunStateRow {
    let mut st = RunStateRow {
        run_id: run.id.clone(),
        ..Default::default()
    };
    for s in steps {
        let failed = s.status == "FAILED";
        match s.phase.as_str() {
            "implementation" if matches!(s.status.as_str(), "SUCCEEDED" | "FAILED") => {
                st.iterations_done += 1
            }
            "verification" if !is_active(&s.status) => {
                st.verify_failures = if failed { st.verify_failures + 1 } else { 0 }
            }
            "review" if !is_active(&s.status) => {
                st.review_failures = if failed { st.review_failures + 1 } else { 0 }
            }
            _ => {}
        }
    }
    st.watchdog_rewrites = events
        .iter()
        .filter(|e| e.event_type == ev::WATCHDOG_REWRITE)
        .count() as i32;
    st
}

fn step_row(
    s: &UpStep,
    seq: i32,
    run_status: &str,
    decide_later: bool,
    started_event: Option<i64>,
    run_created: i64,
) -> StepRow {
    let active = is_active(&s.status);
    // While a step runs, upstream keeps its start in `ended_at`.
    let started_at = s
        .started_at
        .or(started_event)
        .or(if active { s.ended_at } else { None });
    let (status, failure_reason) = if active {
        let why = if run_status == "CANCELED" {
            "the run was cancelled"
        } else {
            INTERRUPTED
        };
        ("CANCELED".to_string(), Some(why.to_string()))
    } else {
        (s.status.clone(), None)
    };
    StepRow {
        attempt: i32::try_from(s.attempt).unwrap_or(i32::MAX),
        settled: !decide_later,
        started_at,
        ended_at: if active { None } else { s.ended_at },
        exit_code: s.exit_code.and_then(|c| i32::try_from(c).ok()),
        prompt_path: s.prompt_path.clone(),
        output_path: s.output_path.clone(),
        failure_reason,
        id: s.id.clone(),
        ..StepRow::new(
            &s.run_id,
            seq,
            &s.phase,
            &status,
            started_at.or(s.ended_at).unwrap_or(run_created),
        )
    }
}

fn event_row(e: &UpEvent, seq: i64) -> EventRow {
    EventRow {
        id: e.id.clone(),
        run_id: Some(e.run_id.clone()),
        run_seq: Some(seq),
        step_id: e.step_id.clone(),
        event_type: e.event_type.clone(),
        payload_json: e.payload_json.clone(),
        created_at: e.ts,
    }
}

/// The time in a UUIDv7 id (upstream's ids are v7): when an artifact row was made.
fn uuid7_ms(id: &str) -> Option<i64> {
    let u = uuid::Uuid::parse_str(id).ok()?;
    if u.get_version() != Some(uuid::Version::SortRand) {
        return None;
    }
    let (secs, nanos) = u.get_timestamp()?.to_unix();
    i64::try_from(secs)
        .ok()?
        .checked_mul(1000)?
        .checked_add(i64::from(nanos / 1_000_000))
}

/// A segment loopd's artifact names and keys accept.
fn plain_segment(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.chars().any(|c| c.is_control() || c == '\\')
}

/// An artifact's (location, file name), when both make a plain name segment.
fn name_parts(a: &UpArtifact) -> Option<(&str, &str)> {
    let file = Path::new(&a.path).file_name()?.to_str()?;
    (plain_segment(file) && plain_segment(&a.location)).then_some((a.location.as_str(), file))
}

fn artifact_rows(up: &Upstream) -> Vec<ArtifactRow> {
    let created: HashMap<&str, i64> = up
        .runs
        .iter()
        .map(|r| (r.id.as_str(), r.created_at))
        .collect();
    // A step's log is the artifact at its output path.
    let step_of: HashMap<(&str, &str), &str> = up
        .steps
        .iter()
        .filter_map(|s| {
            Some((
                (s.run_id.as_str(), s.output_path.as_deref()?),
                s.id.as_str(),
            ))
        })
        .collect();
    // How often each name occurs in its run (prompt.txt once per iteration).
    let mut total: HashMap<(&str, &str, &str), usize> = HashMap::new();
    for a in &up.artifacts {
        if let Some((loc, file)) = name_parts(a) {
            *total.entry((a.run_id.as_str(), loc, file)).or_insert(0) += 1;
        }
    }
    let mut seen: HashMap<(&str, &str, &str), usize> = HashMap::new();
    let mut used: HashSet<(String, String)> = HashSet::new();
    let mut out = Vec::with_capacity(up.artifacts.len());
    for a in &up.artifacts {
        let mut name = match name_parts(a) {
            Some((loc, file)) => {
                let key = (a.run_id.as_str(), loc, file);
                let k = seen.entry(key).or_insert(0);
                *k += 1;
                if total.get(&key).copied().unwrap_or(0) > 1 {
                    format!("upstream/{loc}/{}", numbered(file, *k))
                } else {
                    format!("upstream/{loc}/{file}")
                }
            }
            None => format!("upstream/{}", a.id),
        };
        if name.len() > 255 || !used.insert((a.run_id.clone(), name.clone())) {
            name = format!("upstream/{}", a.id);
            used.insert((a.run_id.clone(), name.clone()));
        }
        let original = a.path.trim_start_matches('/');
        let key = if original.split('/').all(plain_segment) && plain_segment(&a.location) {
            format!("runs/{}/upstream-loopd/{}/{original}", a.run_id, a.location)
        } else {
            format!("runs/{}/upstream-loopd/{}", a.run_id, a.id)
        };
        out.push(ArtifactRow {
            id: a.id.clone(),
            run_id: a.run_id.clone(),
            step_id: step_of
                .get(&(a.run_id.as_str(), a.path.as_str()))
                .map(|s| s.to_string()),
            name,
            kind: a.kind.clone(),
            size: 0,
            sha256: a.checksum.clone().unwrap_or_default(),
            store: UPSTREAM_STORE.into(),
            object_key: key,
            created_at: uuid7_ms(&a.id)
                .or_else(|| created.get(a.run_id.as_str()).copied())
                .unwrap_or(0),
        });
    }
    out
}

/// `prompt.txt`, 2 → `prompt.2.txt`.
fn numbered(file: &str, k: usize) -> String {
    match file.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem}.{k}.{ext}"),
        _ => format!("{file}.{k}"),
    }
}

#[cfg(test)]
mod tests;
