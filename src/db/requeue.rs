//! Leases taken back — expired, released by their worker, or lost with a worker that went
//! away — and what becomes of their steps (`RETRYING`, or FAILED once the infrastructure
//! retries are used up, or CANCELED with their run). Re-exported by `leases`.

use super::models::{LeaseRow, StepRow};
use super::schema::{runs, steps};
use super::step_lease::{check_held, clear_lease, lease_columns, leased};
use super::{on_conn, Conn, DbError};
use crate::domain::pipeline::INFRA_PREFIX;
use diesel::prelude::*;

/// A lease taken away from its worker, and what became of its step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requeued {
    pub step_id: String,
    pub run_id: String,
    pub worker_id: String,
    pub epoch: i64,
    /// True when the step used up its infrastructure retries and is now FAILED.
    pub failed: bool,
    /// True when the step's run was cancelled: the step is now CANCELED.
    pub canceled: bool,
    pub infra_attempts: i32,
}

/// Takes a lease back and puts its step in `RETRYING`. With `count_infra`, the loss counts
/// against the step's infrastructure retries and fails it once `max_infra` are used up. A
/// lease that is no longer there at that epoch (its step completed, or it was taken back,
/// while this waited for the row) is left alone: `None`.
fn requeue(
    conn: &mut Conn,
    lease: &LeaseRow,
    count_infra: bool,
    max_infra: i32,
    now: i64,
) -> Result<Option<Requeued>, DbError> {
    requeue_until(conn, lease, count_infra, max_infra, now, None)
}

/// [`requeue`], the step not claimable before `not_before` (ms) when given.
fn requeue_until(
    conn: &mut Conn,
    lease: &LeaseRow,
    count_infra: bool,
    max_infra: i32,
    now: i64,
    not_before: Option<i64>,
) -> Result<Option<Requeued>, DbError> {
    let gone = on_conn!(conn, |c| diesel::update(
        leased()
            .filter(steps::id.eq(&lease.step_id))
            .filter(steps::lease_epoch.eq(lease.epoch))
    )
    .set(clear_lease())
    .execute(c))?;
    if gone == 0 {
        return Ok(None);
    }
    let step: StepRow = on_conn!(conn, |c| steps::table
        .find(&lease.step_id)
        .select(StepRow::as_select())
        .get_result(c))?;
    let run_status: String = on_conn!(conn, |c| runs::table
        .find(&step.run_id)
        .select(runs::status)
        .get_result(c))?;
    let infra = step.infra_attempts + i32::from(count_infra);
    let failed = count_infra && infra >= max_infra;
    let (status, reason, ended) = if run_status == "CANCELED" {
        // Nobody will run a step of a cancelled run again.
        (
            "CANCELED",
            Some("the run was cancelled".to_string()),
            Some(now),
        )
    } else if failed {
        (
            "FAILED",
            Some(format!(
                "{INFRA_PREFIX}lost its lease {infra} times (last on worker {}): giving up",
                lease.worker_id
            )),
            Some(now),
        )
    } else {
        ("RETRYING", None, None)
    };
    on_conn!(conn, |c| diesel::update(steps::table.find(&lease.step_id))
        .set((
            steps::status.eq(status),
            steps::infra_attempts.eq(infra),
            steps::preferred_worker_id.eq(None::<String>),
            steps::failure_reason.eq(reason),
            steps::ended_at.eq(ended),
            steps::not_before.eq(not_before),
        ))
        .execute(c))?;
    Ok(Some(Requeued {
        step_id: lease.step_id.clone(),
        run_id: step.run_id,
        worker_id: lease.worker_id.clone(),
        epoch: lease.epoch,
        failed: failed && run_status != "CANCELED",
        canceled: run_status == "CANCELED",
        infra_attempts: infra,
    }))
}

/// Hands a lease back on the worker's own initiative (drain): no retry is used up.
pub fn release(
    conn: &mut Conn,
    step_id: &str,
    worker_id: &str,
    epoch: i64,
    pause_ms: Option<i64>,
) -> Result<Requeued, DbError> {
    let held = check_held(conn, step_id, worker_id, epoch)?;
    let not_before = pause_ms.map(|p| held.now_ms + p.max(0));
    requeue_until(conn, &held.lease, false, i32::MAX, held.now_ms, not_before)?
        .ok_or(DbError::StaleLease)
}

/// Takes leases back as lost (each counts as an infrastructure retry); returns those taken.
fn requeue_all(
    conn: &mut Conn,
    list: &[LeaseRow],
    max_infra: i32,
    now: i64,
) -> Result<Vec<Requeued>, DbError> {
    let mut out = Vec::with_capacity(list.len());
    for l in list {
        out.extend(requeue(conn, l, true, max_infra, now)?);
    }
    Ok(out)
}

/// Requeues every lease whose expiry has passed at `now` (the database's clock, read by the
/// caller); each counts as an infrastructure retry.
pub fn expire_due(conn: &mut Conn, max_infra: i32, now: i64) -> Result<Vec<Requeued>, DbError> {
    let due: Vec<LeaseRow> = match conn {
        Conn::Pg(c) => leased()
            .filter(steps::lease_expires_at.le(now))
            .select(lease_columns!())
            .for_update()
            .skip_locked()
            .load(&mut **c)?,
        Conn::Sqlite(c) => leased()
            .filter(steps::lease_expires_at.le(now))
            .select(lease_columns!())
            .load(&mut **c)?,
    };
    requeue_all(conn, &due, max_infra, now)
}

/// Requeues every lease a worker holds (it went offline or was revoked).
pub fn release_all_of_worker(
    conn: &mut Conn,
    worker_id: &str,
    max_infra: i32,
) -> Result<Vec<Requeued>, DbError> {
    let now = conn.now_ms()?;
    let held: Vec<LeaseRow> = on_conn!(conn, |c| leased()
        .filter(steps::worker_id.eq(worker_id))
        .select(lease_columns!())
        .load(c))?;
    requeue_all(conn, &held, max_infra, now)
}

/// Requeues the leases of every worker not in `live` (single role at start: the previous
/// process's local worker is gone).
pub fn release_all_except(
    conn: &mut Conn,
    live: &[String],
    max_infra: i32,
) -> Result<Vec<Requeued>, DbError> {
    let now = conn.now_ms()?;
    let held: Vec<LeaseRow> = on_conn!(conn, |c| leased()
        .filter(steps::worker_id.ne_all(live.to_vec()))
        .select(lease_columns!())
        .load(c))?;
    requeue_all(conn, &held, max_infra, now)
}
