//! Queries on `steps` (leasing lives in `leases.rs`).

use super::models::{ImplStep, StepRow};
use super::schema::{runs, steps};
use super::{on_conn, Conn, DbError};
use diesel::prelude::*;

pub fn insert(conn: &mut Conn, row: &StepRow) -> Result<(), DbError> {
    on_conn!(conn, |c| diesel::insert_into(steps::table)
        .values(row)
        .execute(c))?;
    Ok(())
}

pub fn get(conn: &mut Conn, id: &str) -> Result<Option<StepRow>, DbError> {
    let r = on_conn!(conn, |c| steps::table
        .find(id)
        .select(StepRow::as_select())
        .get_result(c)
        .optional())?;
    Ok(r)
}

/// A run's steps in execution order.
pub fn for_run(conn: &mut Conn, run_id: &str) -> Result<Vec<StepRow>, DbError> {
    let rows = on_conn!(conn, |c| steps::table
        .filter(steps::run_id.eq(run_id))
        .select(StepRow::as_select())
        .order(steps::seq.asc())
        .load(c))?;
    Ok(rows)
}

/// A run's steps with their current lease expiry (None when not leased).
pub fn for_run_with_leases(
    conn: &mut Conn,
    run_id: &str,
) -> Result<Vec<(StepRow, Option<i64>)>, DbError> {
    let rows = on_conn!(conn, |c| steps::table
        .filter(steps::run_id.eq(run_id))
        .select((StepRow::as_select(), steps::lease_expires_at))
        .order(steps::seq.asc())
        .load(c))?;
    Ok(rows)
}

/// The step with the highest `seq` of a run.
pub fn last(conn: &mut Conn, run_id: &str) -> Result<Option<StepRow>, DbError> {
    let r = on_conn!(conn, |c| steps::table
        .filter(steps::run_id.eq(run_id))
        .select(StepRow::as_select())
        .order(steps::seq.desc())
        .first(c)
        .optional())?;
    Ok(r)
}

/// Next attempt number of a phase in a run: a per-phase counter (the 3rd implementation step
/// has attempt 3), used in artifact names.
pub fn next_attempt(conn: &mut Conn, run_id: &str, phase: &str) -> Result<i32, DbError> {
    let max: Option<i32> = on_conn!(conn, |c| steps::table
        .filter(steps::run_id.eq(run_id))
        .filter(steps::phase.eq(phase))
        .select(diesel::dsl::max(steps::attempt))
        .get_result(c))?;
    Ok(max.unwrap_or(0) + 1)
}

/// Steps of a run that are not finished (queued, leased or waiting to be re-leased).
pub fn active_for_run(conn: &mut Conn, run_id: &str) -> Result<Vec<StepRow>, DbError> {
    let rows = on_conn!(conn, |c| steps::table
        .filter(steps::run_id.eq(run_id))
        .filter(steps::status.eq_any(["QUEUED", "IN_PROGRESS", "RETRYING"]))
        .select(StepRow::as_select())
        .order(steps::seq.asc())
        .load(c))?;
    Ok(rows)
}

/// The queued or retrying steps of RUNNING runs, as (run id, required labels), by run and then
/// in queue order.
pub fn waiting_of_running(conn: &mut Conn) -> Result<Vec<(String, String)>, DbError> {
    let rows = on_conn!(conn, |c| steps::table
        .inner_join(runs::table)
        .filter(runs::status.eq("RUNNING"))
        .filter(steps::status.eq_any(["QUEUED", "RETRYING"]))
        .select((steps::run_id, steps::required_labels))
        .order((steps::run_id.asc(), steps::seq.asc()))
        .load(c))?;
    Ok(rows)
}

/// The agent account of each RUNNING run's waiting steps that have one: (run id, account).
pub fn waiting_accounts_of_running(conn: &mut Conn) -> Result<Vec<(String, String)>, DbError> {
    let rows: Vec<(String, Option<String>)> = on_conn!(conn, |c| steps::table
        .inner_join(runs::table)
        .filter(runs::status.eq("RUNNING"))
        .filter(steps::status.eq_any(["QUEUED", "RETRYING"]))
        .filter(steps::account.is_not_null())
        .select((steps::run_id, steps::account))
        .load(c))?;
    Ok(rows
        .into_iter()
        .filter_map(|(r, a)| a.map(|a| (r, a)))
        .collect())
}

/// Whether a run has a step that is not finished, other than `except`.
pub fn any_active(conn: &mut Conn, run_id: &str, except: Option<&str>) -> Result<bool, DbError> {
    let found: bool = on_conn!(conn, |c| diesel::select(diesel::dsl::exists(
        steps::table
            .filter(steps::run_id.eq(run_id))
            .filter(steps::status.eq_any(["QUEUED", "IN_PROGRESS", "RETRYING"]))
            .filter(steps::id.ne(except.unwrap_or("")))
    ))
    .get_result(c))?;
    Ok(found)
}

/// A run's newest implementation steps, newest first, at most `limit`.
pub fn recent_implementations(
    conn: &mut Conn,
    run_id: &str,
    limit: i64,
) -> Result<Vec<ImplStep>, DbError> {
    let rows = on_conn!(conn, |c| steps::table
        .filter(steps::run_id.eq(run_id))
        .filter(steps::phase.eq("implementation"))
        .select(ImplStep::as_select())
        .order(steps::seq.desc())
        .limit(limit)
        .load(c))?;
    Ok(rows)
}

/// A run's succeeded implementation steps, newest first.
pub fn succeeded_implementations(conn: &mut Conn, run_id: &str) -> Result<Vec<ImplStep>, DbError> {
    let rows = on_conn!(conn, |c| steps::table
        .filter(steps::run_id.eq(run_id))
        .filter(steps::phase.eq("implementation"))
        .filter(steps::status.eq("SUCCEEDED"))
        .select(ImplStep::as_select())
        .order(steps::seq.desc())
        .limit(2)
        .load(c))?;
    Ok(rows)
}

/// Holds the queued and retrying steps of `run_ids` until `until` (ms since the epoch): no
/// claim takes them before (a step already held longer keeps its time). How many it held.
pub fn hold_until(conn: &mut Conn, run_ids: &[String], until: i64) -> Result<usize, DbError> {
    let mut n = 0;
    // Bounded lists of bound parameters (SQLite's limit).
    for ids in run_ids.chunks(500) {
        n += on_conn!(conn, |c| diesel::update(steps::table)
            .filter(steps::run_id.eq_any(ids))
            .filter(steps::status.eq_any(["QUEUED", "RETRYING"]))
            .filter(steps::not_before.is_null().or(steps::not_before.lt(until)),)
            .set(steps::not_before.eq(Some(until)))
            .execute(c))?;
    }
    Ok(n)
}

/// Lets the queued and retrying steps of `run_ids` held until exactly `until` be claimed now
/// (a hold that no longer applies). How many it let go.
pub fn release_hold(conn: &mut Conn, run_ids: &[String], until: i64) -> Result<usize, DbError> {
    let mut n = 0;
    for ids in run_ids.chunks(500) {
        n += on_conn!(conn, |c| diesel::update(steps::table)
            .filter(steps::run_id.eq_any(ids))
            .filter(steps::status.eq_any(["QUEUED", "RETRYING"]))
            .filter(steps::not_before.eq(until))
            .set(steps::not_before.eq(None::<i64>))
            .execute(c))?;
    }
    Ok(n)
}

/// Writes a step's mutable columns back.
pub fn save(conn: &mut Conn, row: &StepRow) -> Result<(), DbError> {
    let n = on_conn!(conn, |c| diesel::update(steps::table.find(&row.id))
        .set((
            steps::status.eq(&row.status),
            steps::attempt.eq(row.attempt),
            steps::infra_attempts.eq(row.infra_attempts),
            steps::is_final.eq(row.is_final),
            steps::settled.eq(row.settled),
            steps::queued_at.eq(row.queued_at),
            steps::started_at.eq(row.started_at),
            steps::ended_at.eq(row.ended_at),
            steps::exit_code.eq(row.exit_code),
            steps::prompt.eq(&row.prompt),
            steps::prompt_path.eq(&row.prompt_path),
            steps::output_path.eq(&row.output_path),
            steps::output_tail.eq(&row.output_tail),
            steps::runner_notes.eq(&row.runner_notes),
            steps::output_size.eq(row.output_size),
            steps::completion_detected.eq(row.completion_detected),
            steps::worker_id.eq(&row.worker_id),
            steps::lease_epoch.eq(row.lease_epoch),
            steps::preferred_worker_id.eq(&row.preferred_worker_id),
            steps::failure_reason.eq(&row.failure_reason),
            steps::completion_digest.eq(&row.completion_digest),
        ))
        .execute(c))?;
    if n == 0 {
        return Err(DbError::NotFound);
    }
    Ok(())
}

/// Records how many output bytes the controller holds for a step.
pub fn set_output_size(conn: &mut Conn, id: &str, size: i64) -> Result<(), DbError> {
    on_conn!(conn, |c| diesel::update(steps::table.find(id))
        .set(steps::output_size.eq(size))
        .execute(c))?;
    Ok(())
}

/// Counts steps per (phase, status) (for metrics).
pub fn count_by_phase_status(conn: &mut Conn) -> Result<Vec<(String, String, i64)>, DbError> {
    let rows = on_conn!(conn, |c| steps::table
        .group_by((steps::phase, steps::status))
        .select((steps::phase, steps::status, diesel::dsl::count_star()))
        .load::<(String, String, i64)>(c))?;
    Ok(rows)
}

/// Total infrastructure retries (lost leases) over all steps (for metrics).
pub fn total_infra_attempts(conn: &mut Conn) -> Result<i64, DbError> {
    let n: Option<i64> = on_conn!(conn, |c| steps::table
        .select(diesel::dsl::sum(steps::infra_attempts))
        .get_result(c))?;
    Ok(n.unwrap_or(0))
}
