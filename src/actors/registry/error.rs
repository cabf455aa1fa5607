//! Why a worker request was refused: the error of every WorkerRegistryActor message, mapped
//! to HTTP answers by `http/error.rs` and to `PlaneError`s by the local control plane.

use crate::db::DbError;

/// Why a worker request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("missing or invalid worker token")]
    Unauthorized,
    #[error("this token belongs to another worker")]
    Forbidden,
    #[error("another process is already using this worker token")]
    DuplicateInstance,
    #[error("the worker was marked offline; register again")]
    Offline,
    #[error("unknown worker")]
    NotFound,
    #[error("{0}")]
    Invalid(String),
    #[error("more than {0} registrations a minute with the join token; retry later")]
    TooManyRegistrations(u32),
    #[error("{0} workers are online already (limits.max_live_workers); retry later")]
    TooManyWorkers(usize),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("lease owner unavailable: {0}")]
    Lease(String),
}
