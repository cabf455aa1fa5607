//! The one interface the RunnerActor (`src/worker/`) sees the control plane through —
//! claim, heartbeat, stream output, post events, store and read artifacts, complete, release —
//! with two implementations: [`local`] (actor messages, role single) and [`http`] (the worker
//! API, role worker). Both speak the same claim → lease → renew → complete protocol. This file
//! imports only `api` and `domain`, so the worker depends on the interface, never on the
//! actors behind the local plane; `app` picks the implementation.

pub mod http;
pub mod local;

use crate::api::{ArtifactRef, Assignment, CompleteRequest, HeldLease, LeaseVerdict};
use crate::domain::WorkerStatus;
use bytes::Bytes;
use std::time::Duration;

/// Why the control plane refused or failed a call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PlaneError {
    /// The lease is gone: kill the step and write nothing more.
    #[error("stale lease")]
    Stale,
    /// The controller considers this worker offline or revoked: register again.
    #[error("worker no longer registered: {0}")]
    Gone(String),
    /// Output was sent past what the controller holds; resend from this offset.
    #[error("output offset gap: controller holds {0} bytes")]
    OffsetGap(u64),
    /// Transient: the controller or its database is unreachable. Retry with backoff.
    #[error("control plane unavailable: {0}")]
    Unavailable(String),
    /// The controller's artifact store failed the request after its own retries: do not
    /// retry on top of them.
    #[error("artifact store unavailable: {0}")]
    Store(String),
    /// A request the controller refused for good (a bug or bad data).
    #[error("rejected: {0}")]
    Rejected(String),
    #[error("not found: {0}")]
    NotFound(String),
}

impl PlaneError {
    pub fn is_transient(&self) -> bool {
        matches!(self, PlaneError::Unavailable(_))
    }
}

/// The control plane a runner talks to: what the worker wing needs of a controller.
/// Implemented by [`local::LocalPlane`] and [`http::HttpPlane`]; `app` picks one.
#[async_trait::async_trait]
pub trait ControlPlane: Send + Sync {
    /// This worker's id.
    fn worker_id(&self) -> String;

    /// Claims a step, waiting up to `wait` for one.
    async fn claim(&self, wait: Duration) -> Result<Option<Assignment>, PlaneError>;

    /// Reports liveness and the held leases; returns what to do with each lease.
    async fn heartbeat(
        &self,
        status: WorkerStatus,
        leases: Vec<HeldLease>,
        metrics: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Vec<LeaseVerdict>, PlaneError>;

    /// After [`PlaneError::Gone`]: joins the controller again (a fresh worker id and token).
    /// The local plane's worker is this process's own: nothing to do.
    async fn rejoin(&self) {}

    /// Appends live output at `offset`; returns the bytes now held.
    async fn append_output(
        &self,
        step_id: &str,
        epoch: i64,
        offset: u64,
        content: String,
    ) -> Result<u64, PlaneError>;

    /// Records an event about the step.
    async fn post_event(
        &self,
        step_id: &str,
        epoch: i64,
        event_type: &str,
        payload: serde_json::Value,
    ) -> Result<(), PlaneError>;

    /// Stores an artifact of the step's run.
    async fn put_artifact(
        &self,
        step_id: &str,
        epoch: i64,
        name: &str,
        bytes: Bytes,
    ) -> Result<ArtifactRef, PlaneError>;

    /// Reads an artifact of the step's run (a checkpoint bundle).
    async fn get_artifact(
        &self,
        step_id: &str,
        epoch: i64,
        name: &str,
    ) -> Result<Bytes, PlaneError>;

    /// Completes the step; when `req.claim_next` is set, the answer may carry this worker's
    /// next step, already leased to it.
    async fn complete(
        &self,
        step_id: &str,
        req: CompleteRequest,
    ) -> Result<Option<Assignment>, PlaneError>;

    /// Hands a lease back without using a retry; with `retry_after_ms`, the step is not
    /// offered again for that long.
    async fn release(
        &self,
        step_id: &str,
        epoch: i64,
        reason: &str,
        retry_after_ms: Option<u64>,
    ) -> Result<(), PlaneError>;
}
