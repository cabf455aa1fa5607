//! Why a lease operation was refused: the error of every LeaseActor message, mapped to HTTP
//! answers by `http/error.rs` and to `PlaneError`s by the local control plane.

use crate::db::DbError;

/// Why a lease operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("stale lease: the step is no longer leased to this worker at this epoch")]
    Stale,
    #[error("the step is leased to another worker")]
    Forbidden,
    #[error("no such step")]
    NotFound,
    #[error("{0}")]
    Invalid(String),
    /// Output written past what the controller holds: resend from this offset.
    #[error("output offset is past the {0} bytes held")]
    OffsetGap(u64),
    #[error(transparent)]
    Db(DbError),
    /// The artifact store failed the request after its own retries.
    #[error("artifact store unavailable: {0}")]
    Store(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// This controller is stopping: claim through another one.
    #[error("this controller is stopping: claim through another one")]
    Stopping,
}

impl From<DbError> for LeaseError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::StaleLease => LeaseError::Stale,
            DbError::NotFound => LeaseError::NotFound,
            other => LeaseError::Db(other),
        }
    }
}

impl LeaseError {
    /// A failed decision (`run_progress::decide`, taken in a completion's transaction) as the
    /// worker's answer: the decision fails only when the database does; an unavailable
    /// database is a 503, not a 500, and a run gone meanwhile is an internal error.
    pub fn from_decision(e: DbError) -> LeaseError {
        match e {
            DbError::NotFound => LeaseError::Internal("run not found".into()),
            other => LeaseError::Db(other),
        }
    }
}
