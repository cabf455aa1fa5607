//! The lease primitives, each atomic when called inside [`Conn::write_tx`]: claim the oldest
//! claimable step a worker may run (Postgres: `FOR UPDATE SKIP LOCKED`; SQLite: the
//! immediate transaction), renew, release, expire everything due, and the epoch check every
//! worker write goes through. Times come from the database clock.
//!
//! A lease is the `lease_granted_at` and `lease_expires_at` columns of its step (with the
//! step's worker, epoch and attempt); the `leases` view reads them as rows, and every write
//! goes to `steps`.

use super::models::{label_subsets, labels_match, LeaseRow, StepRow};
use super::schema::{runs, steps, workers};
use super::step_lease::{clear_lease, lease_columns, leased};
use super::{loopd_now_ms, on_conn, Conn, DbError};
use diesel::prelude::*;

pub use super::requeue::{
    expire_due, release, release_all_except, release_all_of_worker, Requeued,
};
pub use super::step_lease::{check_held, Held};

/// Who is claiming, and the rules for what it may take.
#[derive(Debug, Clone)]
pub struct ClaimSpec<'a> {
    pub worker_id: &'a str,
    pub labels: &'a [String],
    pub ttl_ms: i64,
    /// A step that prefers another worker is left to it for this long after being queued.
    pub affinity_window_ms: i64,
}

/// A granted lease and the step it covers (already IN_PROGRESS).
#[derive(Debug, Clone)]
pub struct Granted {
    pub step: StepRow,
    pub lease: LeaseRow,
    pub now_ms: i64,
}

/// The label sets a worker with `labels` may run, as a plain equality list: every subset of
/// its labels (a step's required labels are stored in the same canonical encoding), or, for a
/// worker with many labels, the distinct sets in the queue that it matches.
pub fn allowed_sets(conn: &mut Conn, labels: &[String]) -> Result<Vec<String>, DbError> {
    Ok(match label_subsets(labels) {
        Some(all) => all,
        None => {
            let sets: Vec<String> = on_conn!(conn, |c| steps::table
                .filter(steps::status.eq_any(["QUEUED", "RETRYING"]))
                .select(steps::required_labels)
                .distinct()
                .load(c))?;
            sets.into_iter()
                .filter(|s| labels_match(s, labels))
                .collect()
        }
    })
}

/// Claims the oldest claimable step of a RUNNING run (or a postmortem step of any run) that
/// this worker may run, a step that
/// prefers this worker before any other. Must run inside a write transaction. A worker that is
/// draining or revoked gets nothing.
pub fn claim(conn: &mut Conn, spec: &ClaimSpec<'_>) -> Result<Option<Granted>, DbError> {
    let allowed = allowed_sets(conn, spec.labels)?;
    if allowed.is_empty() {
        return Ok(None);
    }
    let window = spec.affinity_window_ms;
    let me = spec.worker_id.to_string();
    // Accounts at their limit or paused: none of their steps is given out. Exact on SQLite,
    // whose write transaction is exclusive (Postgres' claim function locks the account).
    let now = conn.now_ms()?;
    let blocked = super::accounts::blocked(conn, now)?;
    macro_rules! candidates {
        () => {
            steps::table
                .filter(steps::status.eq_any(["QUEUED", "RETRYING"]))
                .filter(
                    steps::account
                        .is_null()
                        .or(steps::account.ne_all(blocked.clone())),
                )
                // A step handed back under API pressure waits out its pause.
                .filter(
                    steps::not_before
                        .is_null()
                        .or(steps::not_before.le(loopd_now_ms().nullable())),
                )
                // Steps of RUNNING runs, and a postmortem's of any run (it analyses ended ones).
                .filter(
                    steps::run_id
                        .eq_any(
                            runs::table
                                .filter(runs::status.eq("RUNNING"))
                                .select(runs::id),
                        )
                        .or(steps::phase.eq("postmortem")),
                )
                .filter(steps::required_labels.eq_any(allowed.clone()))
                .filter(
                    steps::preferred_worker_id
                        .is_null()
                        .or(steps::preferred_worker_id.eq(me.clone()))
                        // Queued a window ago, a step no longer waits for the one it prefers.
                        .or((steps::queued_at + window).le(loopd_now_ms())),
                )
                .filter(diesel::dsl::not(diesel::dsl::exists(
                    workers::table
                        .filter(workers::id.eq(me.clone()))
                        .filter(workers::status.eq_any(["draining", "revoked"])),
                )))
                // The steps waiting for this very worker first: taking another run's step
                // (whose window ran out) instead would leave its own waiting a whole window.
                .order((
                    diesel::dsl::case_when(
                        steps::preferred_worker_id.eq(me.clone()),
                        0.into_sql::<diesel::sql_types::Integer>(),
                    )
                    .otherwise(1.into_sql::<diesel::sql_types::Integer>())
                    .asc(),
                    steps::queued_at.asc(),
                    steps::id.asc(),
                ))
                // The database time comes with the pick: no statement of its own.
                .select((steps::id, loopd_now_ms()))
        };
    }
    // A SELECT (which the connection keeps prepared; diesel prepares no UPDATE) picks and
    // locks the step, skipping rows other claimers hold.
    let picked: Option<(String, i64)> = match conn {
        Conn::Pg(c) => candidates!()
            .for_update()
            .skip_locked()
            .first(&mut **c)
            .optional()?,
        // The first row, without a LIMIT, which SQLite would plan anew at every run (see
        // the module `db`); only the ordered candidates' first is read.
        Conn::Sqlite(c) => candidates!().get_result(&mut **c).optional()?,
    };
    let Some((step_id, now)) = picked else {
        return Ok(None);
    };
    let step: StepRow = on_conn!(conn, |c| diesel::update(steps::table.find(&step_id))
        .set((
            steps::status.eq("IN_PROGRESS"),
            steps::worker_id.eq(Some(spec.worker_id)),
            steps::lease_epoch.eq(steps::lease_epoch + 1),
            steps::started_at.eq(Some(now)),
            steps::ended_at.eq(None::<i64>),
            steps::lease_granted_at.eq(Some(now)),
            steps::lease_expires_at.eq(Some(now + spec.ttl_ms)),
        ))
        .returning(StepRow::as_returning())
        .get_result(c))?;
    let lease = LeaseRow::granted(&step, spec.worker_id, now, spec.ttl_ms);
    Ok(Some(Granted {
        step,
        lease,
        now_ms: now,
    }))
}

/// The lease a write must carry: present, held by `worker_id` at `epoch`, not expired. Call
/// it inside the write's transaction ([`Conn::write_tx`]): on Postgres the lease row stays
/// locked (`FOR UPDATE`) until the write commits, so the expiry sweep (which skips locked
/// rows) cannot take the lease away in between; on SQLite the immediate transaction already
/// holds the write lock.
pub fn check(
    conn: &mut Conn,
    step_id: &str,
    worker_id: &str,
    epoch: i64,
) -> Result<LeaseRow, DbError> {
    check_held(conn, step_id, worker_id, epoch).map(|h| h.lease)
}

/// Extends a held lease to `now + ttl` (one past its expiry too, if the sweep has not taken it
/// back yet). A released or re-granted lease is stale.
pub fn renew(
    conn: &mut Conn,
    step_id: &str,
    worker_id: &str,
    epoch: i64,
    ttl_ms: i64,
) -> Result<LeaseRow, DbError> {
    let now = conn.now_ms()?;
    let renewed: Option<LeaseRow> = on_conn!(conn, |c| diesel::update(
        leased()
            .filter(steps::id.eq(step_id))
            .filter(steps::worker_id.eq(worker_id))
            .filter(steps::lease_epoch.eq(epoch))
    )
    .set(steps::lease_expires_at.eq(now + ttl_ms))
    .returning(lease_columns!())
    .get_result(c)
    .optional())?;
    renewed.ok_or(DbError::StaleLease)
}

/// Gives every lease of `workers` at least `ttl_ms` from now (controller start: a worker that
/// kept its step running through the outage gets one lease period to heartbeat again).
pub fn extend_of_workers(
    conn: &mut Conn,
    workers: &[String],
    ttl_ms: i64,
) -> Result<usize, DbError> {
    let now = conn.now_ms()?;
    let n = on_conn!(conn, |c| diesel::update(
        steps::table
            .filter(steps::worker_id.eq_any(workers.to_vec()))
            .filter(steps::lease_expires_at.lt(now + ttl_ms))
    )
    .set(steps::lease_expires_at.eq(now + ttl_ms))
    .execute(c))?;
    Ok(n)
}

/// Gives every lease at least `ttl_ms` from `now` (the sweep, after its own process was paused:
/// every lease that exists belongs to a worker not marked offline).
pub fn extend_all(conn: &mut Conn, now: i64, ttl_ms: i64) -> Result<usize, DbError> {
    let n = on_conn!(conn, |c| diesel::update(
        steps::table.filter(steps::lease_expires_at.lt(now + ttl_ms))
    )
    .set(steps::lease_expires_at.eq(now + ttl_ms))
    .execute(c))?;
    Ok(n)
}

/// Removes a step's lease when the step finishes or is cancelled.
pub fn delete(conn: &mut Conn, step_id: &str) -> Result<(), DbError> {
    on_conn!(conn, |c| diesel::update(steps::table.find(step_id))
        .set(clear_lease())
        .execute(c))?;
    Ok(())
}

pub fn get(conn: &mut Conn, step_id: &str) -> Result<Option<LeaseRow>, DbError> {
    let r = on_conn!(conn, |c| leased()
        .filter(steps::id.eq(step_id))
        .select(lease_columns!())
        .get_result(c)
        .optional())?;
    Ok(r)
}

/// Leases a worker holds.
pub fn of_worker(conn: &mut Conn, worker_id: &str) -> Result<Vec<LeaseRow>, DbError> {
    let r = on_conn!(conn, |c| leased()
        .filter(steps::worker_id.eq(worker_id))
        .select(lease_columns!())
        .load(c))?;
    Ok(r)
}

/// Every lease (for `GET /workers`).
pub fn all(conn: &mut Conn) -> Result<Vec<LeaseRow>, DbError> {
    let r = on_conn!(conn, |c| leased().select(lease_columns!()).load(c))?;
    Ok(r)
}
