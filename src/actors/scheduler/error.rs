//! Why a scheduler operation was refused: the error of every SchedulerActor message, mapped to
//! HTTP answers by `http/error.rs`.

use crate::db::DbError;

/// Why a scheduler operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum SchedError {
    #[error("run not found")]
    NotFound,
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    InvalidTransition(String),
    #[error("{0}")]
    NoCapacity(String),
    /// Another git run not ended works on the run's branch.
    #[error("{0}")]
    BranchInUse(String),
    #[error(transparent)]
    Db(DbError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<DbError> for SchedError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::NotFound => SchedError::NotFound,
            other => SchedError::Db(other),
        }
    }
}
