//! A lease as columns of its step, shared by the lease primitives (`leases`) and the leases
//! taken back (`requeue`), which both sit above this: the steps that hold a lease, their
//! lease read as a [`LeaseRow`], the assignment that ends one, and [`check_held`], the epoch
//! check every worker write goes through.

use super::models::{LeaseRow, StepRow};
use super::schema::steps;
use super::{loopd_now_ms, Conn, DbError};
use diesel::prelude::*;

/// A step's lease columns as a [`LeaseRow`] (for `RETURNING`; only for leased steps).
macro_rules! lease_columns_ {
    () => {
        (
            steps::id,
            steps::worker_id.assume_not_null(),
            steps::lease_epoch,
            steps::lease_granted_at.assume_not_null(),
            steps::lease_expires_at.assume_not_null(),
            steps::attempt,
        )
    };
}

/// The steps that hold a lease.
pub(super) fn leased(
) -> diesel::dsl::Filter<steps::table, diesel::dsl::IsNotNull<steps::lease_expires_at>> {
    steps::table.filter(steps::lease_expires_at.is_not_null())
}

pub(super) use lease_columns_ as lease_columns;

/// The assignment that ends a step's lease.
pub(super) fn clear_lease() -> (
    diesel::dsl::Eq<steps::lease_granted_at, Option<i64>>,
    diesel::dsl::Eq<steps::lease_expires_at, Option<i64>>,
) {
    (
        steps::lease_granted_at.eq(None),
        steps::lease_expires_at.eq(None),
    )
}

/// A live lease checked by [`check_held`], its step (read under the same lock) and the
/// database time of the check.
pub struct Held {
    pub lease: LeaseRow,
    pub step: StepRow,
    pub now_ms: i64,
}

/// The lease a write must carry (`leases::check`), with its step: one statement reads and
/// locks both rows.
pub fn check_held(
    conn: &mut Conn,
    step_id: &str,
    worker_id: &str,
    epoch: i64,
) -> Result<Held, DbError> {
    macro_rules! both {
        () => {
            leased().filter(steps::id.eq(step_id)).select((
                lease_columns!(),
                StepRow::as_select(),
                loopd_now_ms(),
            ))
        };
    }
    let found: Option<(LeaseRow, StepRow, i64)> = match conn {
        Conn::Pg(c) => both!().for_update().get_result(&mut **c).optional()?,
        Conn::Sqlite(c) => both!().get_result(&mut **c).optional()?,
    };
    match found {
        // Held while the row is this worker's at this epoch: only the expiry sweep ends a lease
        // by time, so a controller that was itself paused does not refuse its workers' writes
        // before its sweep has looked (see `LeaseService::sweep`).
        Some((l, s, now)) if l.worker_id == worker_id && l.epoch == epoch => Ok(Held {
            lease: l,
            step: s,
            now_ms: now,
        }),
        _ => Err(DbError::StaleLease),
    }
}
