//! The one interface the RunnerActor sees the control plane through — claim, heartbeat,
//! stream output, post events, store and read artifacts, complete, release — with two
//! implementations: [`local`] (actor messages, role single) and [`http`] (the worker API, role
//! worker). Both speak the same claim → lease → renew → complete protocol.

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

/// The control plane a runner talks to.
#[derive(Clone)]
pub enum ControlPlane {
    Local(local::LocalPlane),
    Http(http::HttpPlane),
}

impl ControlPlane {
    /// This worker's id.
    pub fn worker_id(&self) -> String {
        match self {
            ControlPlane::Local(p) => p.worker_id.clone(),
            ControlPlane::Http(p) => p.worker_id(),
        }
    }

    /// Claims a step, waiting up to `wait` for one.
    pub async fn claim(&self, wait: Duration) -> Result<Option<Assignment>, PlaneError> {
        match self {
            ControlPlane::Local(p) => p.claim(wait).await,
            ControlPlane::Http(p) => p.claim(wait).await,
        }
    }

    /// Reports liveness and the held leases; returns what to do with each lease.
    pub async fn heartbeat(
        &self,
        status: WorkerStatus,
        leases: Vec<HeldLease>,
        metrics: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Vec<LeaseVerdict>, PlaneError> {
        match self {
            ControlPlane::Local(p) => p.heartbeat(status, leases).await,
            ControlPlane::Http(p) => p.heartbeat(status, leases, metrics).await,
        }
    }

    /// Appends live output at `offset`; returns the bytes now held.
    pub async fn append_output(
        &self,
        step_id: &str,
        epoch: i64,
        offset: u64,
        content: String,
    ) -> Result<u64, PlaneError> {
        match self {
            ControlPlane::Local(p) => p.append_output(step_id, epoch, offset, content).await,
            ControlPlane::Http(p) => p.append_output(step_id, epoch, offset, content).await,
        }
    }

    /// Records an event about the step.
    pub async fn post_event(
        &self,
        step_id: &str,
        epoch: i64,
        event_type: &str,
        payload: serde_json::Value,
    ) -> Result<(), PlaneError> {
        match self {
            ControlPlane::Local(p) => p.post_event(step_id, epoch, event_type, payload).await,
            ControlPlane::Http(p) => p.post_event(step_id, epoch, event_type, payload).await,
        }
    }

    /// Stores an artifact of the step's run.
    pub async fn put_artifact(
        &self,
        step_id: &str,
        epoch: i64,
        name: &str,
        bytes: Bytes,
    ) -> Result<ArtifactRef, PlaneError> {
        match self {
            ControlPlane::Local(p) => p.put_artifact(step_id, epoch, name, bytes).await,
            ControlPlane::Http(p) => p.put_artifact(step_id, epoch, name, bytes).await,
        }
    }

    /// Reads an artifact of the step's run (a checkpoint bundle).
    pub async fn get_artifact(
        &self,
        step_id: &str,
        epoch: i64,
        name: &str,
    ) -> Result<Bytes, PlaneError> {
        match self {
            ControlPlane::Local(p) => p.get_artifact(step_id, epoch, name).await,
            ControlPlane::Http(p) => p.get_artifact(step_id, epoch, name).await,
        }
    }

    /// Completes the step; when `req.claim_next` is set, the answer may carry this worker's
    /// next step, already leased to it.
    pub async fn complete(
        &self,
        step_id: &str,
        req: CompleteRequest,
    ) -> Result<Option<Assignment>, PlaneError> {
        match self {
            ControlPlane::Local(p) => p.complete(step_id, req).await,
            ControlPlane::Http(p) => p.complete(step_id, req).await,
        }
    }

    /// Hands a lease back without using a retry.
    pub async fn release(&self, step_id: &str, epoch: i64, reason: &str) -> Result<(), PlaneError> {
        match self {
            ControlPlane::Local(p) => p.release(step_id, epoch, reason).await,
            ControlPlane::Http(p) => p.release(step_id, epoch, reason).await,
        }
    }
}
