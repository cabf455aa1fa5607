//! The check in front of every write a lease holder makes: the lease it carries must be the
//! step's live lease, held by the writing worker at that epoch. Called inside the write's
//! transaction by the holder writes (`writes.rs`), the completion and the hand-back.

use super::error::LeaseError;
use crate::db::leases;
use crate::db::models::{LeaseRow, StepRow};
use crate::db::{self, DbError};

/// The lease a write carries must be the step's live lease, held by `worker_id`. Another
/// worker's live lease at the same epoch is `Forbidden`; anything else is `Stale`. Call it in
/// the write's transaction: the lease row stays locked until the write commits (see
/// [`leases::check`]), and the step is read under the same lock, so it is current.
pub fn authorize(
    c: &mut db::Conn,
    step_id: &str,
    worker_id: &str,
    epoch: i64,
) -> Result<(StepRow, LeaseRow), LeaseError> {
    authorize_held(c, step_id, worker_id, epoch).map(|h| (h.step, h.lease))
}

/// [`authorize`], with the database time of the check.
pub fn authorize_held(
    c: &mut db::Conn,
    step_id: &str,
    worker_id: &str,
    epoch: i64,
) -> Result<leases::Held, LeaseError> {
    match leases::check_held(c, step_id, worker_id, epoch) {
        Ok(h) => Ok(h),
        Err(DbError::StaleLease) => {
            db::steps::get(c, step_id)?.ok_or(LeaseError::NotFound)?;
            match leases::get(c, step_id)? {
                Some(l) if l.worker_id != worker_id && l.epoch == epoch => {
                    Err(LeaseError::Forbidden)
                }
                _ => Err(LeaseError::Stale),
            }
        }
        Err(e) => Err(e.into()),
    }
}
