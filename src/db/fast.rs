//! The pool's two hot paths, on Postgres one round trip each (the functions in `src/db/pg/`;
//! why, in the migration `2026-11-28-000003_fast_paths`): a claim, and a completion's read and
//! write. Every statement sent to Postgres costs it about as much as a whole one-row
//! transaction, while statements inside a function stay planned and cost little; so these call
//! one function each. The decisions stay in Rust. SQLite runs the transactional paths
//! (`leases::claim` with the events here, the completion transaction in the LeaseActor), which
//! stay the reference: the storage suite holds both backends to the same behaviour.

use super::events::{self, NewEvent};
use super::leases::{self, ClaimSpec};
use super::models::{new_id, EventRow, ImplStep, LeaseRow, RunRow, RunStateRow, StepRow};
use super::{Conn, DbError};
use crate::domain::events as ev;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Jsonb, Nullable, Text};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

#[diesel::declare_sql_function]
extern "SQL" {
    fn loopd_claim(
        worker: Text,
        allowed: Array<Text>,
        ttl: BigInt,
        window: BigInt,
        event_ids: Array<Text>,
        phases: Array<Text>,
    ) -> Jsonb;
    fn loopd_complete_snapshot(step: Text, phases: Array<Text>) -> Jsonb;
    #[allow(clippy::too_many_arguments)]
    fn loopd_complete_apply(
        step: Text,
        worker: Text,
        epoch: BigInt,
        run: Jsonb,
        state_before: Jsonb,
        done: Jsonb,
        queued: Nullable<Jsonb>,
        state: Jsonb,
        events: Jsonb,
    ) -> diesel::sql_types::Bool;
}

pub(super) fn pg(conn: &mut Conn) -> Result<&mut diesel::PgConnection, DbError> {
    match conn {
        Conn::Pg(c) => Ok(&mut **c),
        Conn::Sqlite(_) => Err(DbError::Reply(
            "the one-statement paths are Postgres functions".into(),
        )),
    }
}

/// Every step phase: the snapshot reads the highest attempt of each.
pub(super) fn phases() -> Vec<&'static str> {
    crate::domain::StepPhase::ALL
        .iter()
        .map(|p| p.as_str())
        .collect()
}

fn reply(e: serde_json::Error) -> DbError {
    DbError::Reply(format!("database reply: {e}"))
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, DbError> {
    serde_json::from_value(v).map_err(reply)
}

/// What a claim found.
#[derive(Debug)]
pub enum Claimed {
    /// The worker may take nothing: draining, revoked or unknown.
    Closed,
    /// Nothing it may run is queued.
    Empty,
    Got(Box<ClaimedStep>),
}

/// A step leased by [`claim`], with its run and the run's state after the claim's events.
#[derive(Debug)]
pub struct ClaimedStep {
    pub step: StepRow,
    pub lease: LeaseRow,
    /// (Shared with the snapshot in `next`: a run row is not copied at each cycle.)
    pub run: Arc<RunRow>,
    pub state: RunStateRow,
    pub now: i64,
    /// On Postgres, the snapshot the step's completion will decide from if nothing about
    /// the run moves in between (one step in flight per run: usually nothing does).
    pub next: Option<Snapshot>,
}

/// A claim as the LeaseActor takes it: `leases::claim` plus the LEASE_GRANTED and
/// STEP_STARTED events, and, when nothing is granted, whether the worker may take anything at
/// all. On Postgres one statement (`loopd_claim`); on SQLite one immediate transaction.
pub fn claim(conn: &mut Conn, spec: &ClaimSpec<'_>) -> Result<Claimed, DbError> {
    if let Conn::Sqlite(_) = conn {
        return conn.write_tx(|c| claim_in_tx(c, spec));
    }
    let allowed = leases::allowed_sets(conn, spec.labels)?;
    let ids = vec![new_id(), new_id()];
    let (ttl, window) = (spec.ttl_ms, spec.affinity_window_ms);
    let v: Value = diesel::select(loopd_claim(
        spec.worker_id,
        allowed,
        ttl,
        window,
        ids,
        phases(),
    ))
    .get_result(pg(conn)?)?;
    claimed(v)
}

/// A claim from `loopd_claim`'s reply.
pub(super) fn claimed(v: Value) -> Result<Claimed, DbError> {
    if v.get("step").is_none() {
        return Ok(match v.get("closed").and_then(Value::as_bool) {
            Some(true) => Claimed::Closed,
            _ => Claimed::Empty,
        });
    }
    let mut next = parse(v)?.ok_or_else(|| DbError::Reply("a claim without its run".into()))?;
    let lease = next
        .lease
        .clone()
        .ok_or_else(|| DbError::Reply("a claim without its lease".into()))?;
    // The snapshot keeps everything but the prompt, which the worker gets.
    let prompt = next.step.prompt.take();
    let step = StepRow {
        prompt,
        ..next.step.clone()
    };
    Ok(Claimed::Got(Box::new(ClaimedStep {
        step,
        lease,
        run: next.run.clone(),
        state: next.state.clone(),
        now: next.now,
        next: Some(next),
    })))
}

/// [`claim`] in the caller's write transaction, with the transactional primitives.
fn claim_in_tx(c: &mut Conn, spec: &ClaimSpec<'_>) -> Result<Claimed, DbError> {
    let wid = spec.worker_id;
    let Some(g) = leases::claim(c, spec)? else {
        let may_take = super::workers::get(c, wid)?
            .is_some_and(|w| w.status != "draining" && w.status != "revoked");
        return Ok(if may_take {
            Claimed::Empty
        } else {
            Claimed::Closed
        });
    };
    let run = super::runs::require(c, &g.step.run_id)?;
    let s = &g.step;
    let expires = crate::domain::time::rfc3339(g.lease.expires_at);
    let events = [
        NewEvent {
            step_id: Some(s.id.clone()),
            event_type: ev::LEASE_GRANTED,
            payload: ev::lease_granted(&s.id, wid, g.lease.epoch, &expires),
        },
        NewEvent {
            step_id: Some(s.id.clone()),
            event_type: ev::STEP_STARTED,
            payload: ev::step_started(&s.id, &s.phase, s.attempt, wid, g.lease.epoch),
        },
    ];
    // The run's state comes back with the event numbers taken.
    let state = events::reserve(c, &run.id, events.len())?;
    events::insert_numbered(c, &run.id, state.event_seq, &events, g.now_ms)?;
    Ok(Claimed::Got(Box::new(ClaimedStep {
        step: g.step,
        lease: g.lease,
        run: Arc::new(run),
        state,
        now: g.now_ms,
        next: None,
    })))
}

/// What deciding what follows a step reads besides its run and state
/// (`loopd_decision_inputs`).
#[derive(Debug, Clone, Deserialize)]
pub struct Inputs {
    /// Whether another step of the run is queued or running.
    pub others_active: bool,
    /// Highest attempt of each phase the run has had.
    pub attempts: HashMap<String, i32>,
    /// After a verification, the newest three implementation steps, newest first (only the
    /// newest with its prompt).
    pub recent_impls: Vec<ImplStep>,
    /// After a verification, the newest two that succeeded, newest first, without prompts;
    /// read only when fewer than two of `recent_impls` (three of them) succeeded, the one case
    /// a decision uses it.
    pub succeeded_impls: Vec<ImplStep>,
}

/// What a completion's decision reads (see the migration), with the versions of the run's row
/// and of its state's as the database read them (their `xmin`), handed back to
/// [`complete_apply`] for its check (migration `2026-12-07-000013_versions_not_rows`). The run
/// (which a completion does not change) is shared, not copied, from one cycle's snapshot to
/// the next.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub now: i64,
    pub step: StepRow,
    pub lease: Option<LeaseRow>,
    pub run: Arc<RunRow>,
    pub state: RunStateRow,
    pub inputs: Inputs,
    pub run_version: i64,
    pub state_version: i64,
}

#[derive(Deserialize)]
struct Parts {
    now: i64,
    step: StepRow,
    lease: Option<LeaseRow>,
    inputs: Inputs,
    run_version: i64,
    state_version: i64,
}

/// A snapshot from a function's reply; `None` when the step or its run is gone.
fn parse(mut v: Value) -> Result<Option<Snapshot>, DbError> {
    let (run, state) = (v["run"].take(), v["state"].take());
    if v.get("step").is_none() || run.is_null() || state.is_null() {
        return Ok(None);
    }
    let p: Parts = decode(v)?;
    Ok(Some(Snapshot {
        now: p.now,
        step: p.step,
        lease: p.lease,
        run: Arc::new(RunRow::deserialize(run).map_err(reply)?),
        state: RunStateRow::deserialize(state).map_err(reply)?,
        inputs: p.inputs,
        run_version: p.run_version,
        state_version: p.state_version,
    }))
}

/// Reads a completion's inputs without locks; `None` when the step or its run is gone.
pub fn complete_snapshot(conn: &mut Conn, step_id: &str) -> Result<Option<Snapshot>, DbError> {
    let v: Value =
        diesel::select(loopd_complete_snapshot(step_id, phases())).get_result(pg(conn)?)?;
    parse(v)
}

/// The run as a completion's write checks it: its row's version, with the id that finds it and
/// the status a batch reads to take its direct path.
#[derive(Serialize)]
pub struct RunVersion<'a> {
    id: &'a str,
    status: &'a str,
    version: i64,
}

impl<'a> RunVersion<'a> {
    pub fn of(snap: &'a Snapshot) -> Self {
        RunVersion {
            id: &snap.run.id,
            status: &snap.run.status,
            version: snap.run_version,
        }
    }
}

/// The run's state as a completion's write checks it: its row's version.
#[derive(Serialize)]
pub struct StateVersion {
    version: i64,
}

impl StateVersion {
    pub fn of(snap: &Snapshot) -> Self {
        StateVersion {
            version: snap.state_version,
        }
    }
}

/// What a completion decided from a [`Snapshot`].
pub struct Completion<'a> {
    pub worker_id: &'a str,
    pub epoch: i64,
    /// The finished step, settled.
    pub done: &'a StepRow,
    pub queued: Option<&'a StepRow>,
    /// The state to write, its `event_seq` already counting `events`.
    pub state: &'a RunStateRow,
    pub events: &'a [EventRow],
}

pub(super) fn to_json<T: serde::Serialize>(v: &T) -> Result<Value, DbError> {
    serde_json::to_value(v).map_err(|e| DbError::Reply(e.to_string()))
}

/// What a completion writes of its finished step, alone or in a batch: the columns the write
/// sets, no more (the rest of the row is the database's already, and every key sent is parsed
/// by Postgres: the whole row was 19 more).
#[derive(Serialize)]
pub struct Done<'a> {
    status: &'a str,
    settled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_tail: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    runner_notes: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    completion_detected: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure_reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    completion_digest: Option<&'a str>,
}

impl<'a> Done<'a> {
    pub fn of(s: &'a StepRow) -> Self {
        Done {
            status: &s.status,
            settled: s.settled,
            exit_code: s.exit_code,
            output_path: s.output_path.as_deref(),
            output_tail: s.output_tail.as_deref(),
            runner_notes: s.runner_notes.as_deref(),
            completion_detected: s.completion_detected,
            failure_reason: s.failure_reason.as_deref(),
            completion_digest: s.completion_digest.as_deref(),
        }
    }
}

/// What `loopd_complete_apply` writes, as JSON: what changes of the finished step, the queued
/// step, the state and the events.
struct Written {
    done: Value,
    queued: Option<Value>,
    state: Value,
    events: Value,
}

impl Written {
    fn of(w: &Completion<'_>) -> Result<Self, DbError> {
        Ok(Written {
            done: to_json(&Done::of(w.done))?,
            queued: w.queued.map(to_json).transpose()?,
            state: to_json(w.state)?,
            events: to_json(&w.events)?,
        })
    }
}

/// Writes a completion if `snap` still holds (lease live and held, run and state unchanged,
/// no other step in flight); `false`, having written nothing, when anything moved.
pub fn complete_apply(
    conn: &mut Conn,
    snap: &Snapshot,
    w: &Completion<'_>,
) -> Result<bool, DbError> {
    let x = Written::of(w)?;
    let ok = diesel::select(loopd_complete_apply(
        &w.done.id,
        w.worker_id,
        w.epoch,
        to_json(&RunVersion::of(snap))?,
        to_json(&StateVersion::of(snap))?,
        x.done,
        x.queued,
        x.state,
        x.events,
    ))
    .get_result(pg(conn)?)?;
    Ok(ok)
}
