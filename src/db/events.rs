//! Queries on `events`: appending (numbered per run) and reading after a cursor.

use super::models::{new_id, EventRow, RunStateRow};
use super::schema::{events, run_state};
use super::{on_conn, runs, Conn, DbError};
use diesel::prelude::*;

/// Appends one event; a run's events get consecutive `run_seq` numbers in commit order.
pub fn append(
    conn: &mut Conn,
    run_id: Option<&str>,
    step_id: Option<&str>,
    event_type: &str,
    payload: &serde_json::Value,
    now_ms: i64,
) -> Result<EventRow, DbError> {
    let run_seq = match run_id {
        Some(id) => Some(runs::next_event_seq(conn, id)?),
        None => None,
    };
    let row = EventRow {
        id: new_id(),
        run_id: run_id.map(str::to_string),
        run_seq,
        step_id: step_id.map(str::to_string),
        event_type: event_type.to_string(),
        payload_json: payload.to_string(),
        created_at: now_ms,
    };
    on_conn!(conn, |c| diesel::insert_into(events::table)
        .values(&row)
        .execute(c))?;
    Ok(row)
}

/// One event to append with [`append_many`].
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub step_id: Option<String>,
    pub event_type: &'static str,
    pub payload: serde_json::Value,
}

/// Appends several events of one run with a single bump of its event counter.
pub fn append_many(
    conn: &mut Conn,
    run_id: &str,
    list: &[NewEvent],
    now_ms: i64,
) -> Result<(), DbError> {
    if list.is_empty() {
        return Ok(());
    }
    let state = reserve(conn, run_id, list.len())?;
    insert_numbered(conn, run_id, state.event_seq, list, now_ms)
}

/// Takes `n` event numbers of a run (locking its `run_state` row until commit, so events are
/// numbered in commit order) and returns the run's state as it now is: one statement for a
/// caller that needs both.
pub fn reserve(conn: &mut Conn, run_id: &str, n: usize) -> Result<RunStateRow, DbError> {
    let n = n as i64;
    let state: Option<RunStateRow> =
        on_conn!(conn, |c| diesel::update(run_state::table.find(run_id))
            .set(run_state::event_seq.eq(run_state::event_seq + n))
            .returning(RunStateRow::as_returning())
            .get_result(c)
            .optional())?;
    state.ok_or(DbError::NotFound)
}

/// Inserts events numbered up to `last` (taken with [`reserve`]).
pub fn insert_numbered(
    conn: &mut Conn,
    run_id: &str,
    last: i64,
    list: &[NewEvent],
    now_ms: i64,
) -> Result<(), DbError> {
    if list.is_empty() {
        return Ok(());
    }
    let rows = numbered(run_id, last, list, now_ms);
    on_conn!(conn, |c| diesel::insert_into(events::table)
        .values(&rows)
        .execute(c))?;
    Ok(())
}

/// The rows of events of one run numbered up to `last`.
pub fn numbered(run_id: &str, last: i64, list: &[NewEvent], now_ms: i64) -> Vec<EventRow> {
    let n = list.len() as i64;
    list.iter()
        .enumerate()
        .map(|(i, e)| EventRow {
            id: new_id(),
            run_id: Some(run_id.to_string()),
            run_seq: Some(last - n + 1 + i as i64),
            step_id: e.step_id.clone(),
            event_type: e.event_type.to_string(),
            payload_json: e.payload.to_string(),
            created_at: now_ms,
        })
        .collect()
}

/// A run's events with `run_seq > after_seq` and, when given, `created_at > after_ms`, in order.
pub fn after(
    conn: &mut Conn,
    run_id: &str,
    after_seq: i64,
    after_ms: Option<i64>,
    limit: i64,
) -> Result<Vec<EventRow>, DbError> {
    let rows = on_conn!(conn, |c| {
        let mut q = events::table
            .filter(events::run_id.eq(run_id))
            .filter(events::run_seq.gt(after_seq))
            .select(EventRow::as_select())
            .into_boxed();
        if let Some(ms) = after_ms {
            q = q.filter(events::created_at.gt(ms));
        }
        q.order(events::run_seq.asc()).limit(limit).load(c)
    })?;
    Ok(rows)
}

/// Every event of a run, in order.
pub fn for_run(conn: &mut Conn, run_id: &str) -> Result<Vec<EventRow>, DbError> {
    after(conn, run_id, 0, None, i64::MAX)
}

/// Events without a run (worker lifecycle), newest last.
pub fn global(conn: &mut Conn, event_type: &str) -> Result<Vec<EventRow>, DbError> {
    let rows = on_conn!(conn, |c| events::table
        .filter(events::run_id.is_null())
        .filter(events::event_type.eq(event_type))
        .select(EventRow::as_select())
        .order((events::created_at.asc(), events::id.asc()))
        .load(c))?;
    Ok(rows)
}
