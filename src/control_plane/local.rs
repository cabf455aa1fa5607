//! The in-process control plane of the single role: the runner's calls become messages to the
//! LeaseActor and WorkerRegistryActor of the same process, so single mode runs exactly the
//! claim/lease/renew/complete protocol that remote workers use over HTTP.

use super::{ControlPlane, PlaneError};
use crate::actors::lease::{
    AppendOutput, ClaimStep, CompleteStep, LeaseActor, LeaseError, ReadArtifact, RecordStepEvent,
    ReleaseLease, StoreArtifact,
};
use crate::actors::registry::{Heartbeat, RegistryError, WorkerRegistryActor};
use crate::api::{
    ArtifactRef, Assignment, CompleteRequest, HeartbeatRequest, HeldLease, LeaseVerdict,
};
use crate::domain::WorkerStatus;
use actix::Addr;
use bytes::Bytes;
use std::time::Duration;

/// The local plane: this process's actors and the runner's worker id.
#[derive(Clone)]
pub struct LocalPlane {
    pub worker_id: String,
    pub labels: Vec<String>,
    pub lease: Addr<LeaseActor>,
    pub registry: Addr<WorkerRegistryActor>,
}

fn lease_err(e: LeaseError) -> PlaneError {
    match e {
        LeaseError::Stale | LeaseError::Forbidden => PlaneError::Stale,
        LeaseError::NotFound => PlaneError::NotFound("step".into()),
        LeaseError::OffsetGap(n) => PlaneError::OffsetGap(n),
        LeaseError::Invalid(m) => PlaneError::Rejected(m),
        LeaseError::Db(d) => PlaneError::Unavailable(d.to_string()),
        LeaseError::Store(m) => PlaneError::Store(m),
        LeaseError::Internal(m) => PlaneError::Unavailable(m),
        LeaseError::Stopping => PlaneError::Unavailable(e.to_string()),
    }
}

fn mailbox(e: actix::MailboxError) -> PlaneError {
    PlaneError::Unavailable(e.to_string())
}

#[async_trait::async_trait]
impl ControlPlane for LocalPlane {
    fn worker_id(&self) -> String {
        self.worker_id.clone()
    }

    async fn claim(&self, wait: Duration) -> Result<Option<Assignment>, PlaneError> {
        self.lease
            .send(ClaimStep {
                worker_id: self.worker_id.clone(),
                labels: self.labels.clone(),
                wait,
            })
            .await
            .map_err(mailbox)?
            .map_err(lease_err)
    }

    async fn heartbeat(
        &self,
        status: WorkerStatus,
        leases: Vec<HeldLease>,
        _metrics: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Vec<LeaseVerdict>, PlaneError> {
        let request = HeartbeatRequest {
            status,
            metrics: Default::default(),
            leases,
        };
        let r = self
            .registry
            .send(Heartbeat {
                worker_id: self.worker_id.clone(),
                request,
            })
            .await
            .map_err(mailbox)?;
        match r {
            Ok(r) => Ok(r.leases),
            Err(RegistryError::Offline | RegistryError::Unauthorized | RegistryError::NotFound) => {
                Err(PlaneError::Gone("worker offline".into()))
            }
            Err(e) => Err(PlaneError::Unavailable(e.to_string())),
        }
    }

    async fn append_output(
        &self,
        step_id: &str,
        epoch: i64,
        offset: u64,
        content: String,
    ) -> Result<u64, PlaneError> {
        let m = AppendOutput {
            worker_id: self.worker_id.clone(),
            step_id: step_id.into(),
            epoch,
            offset,
            content,
        };
        Ok(self
            .lease
            .send(m)
            .await
            .map_err(mailbox)?
            .map_err(lease_err)?
            .next_offset)
    }

    async fn post_event(
        &self,
        step_id: &str,
        epoch: i64,
        event_type: &str,
        payload: serde_json::Value,
    ) -> Result<(), PlaneError> {
        let m = RecordStepEvent {
            worker_id: self.worker_id.clone(),
            step_id: step_id.into(),
            epoch,
            event_type: event_type.into(),
            payload,
        };
        self.lease
            .send(m)
            .await
            .map_err(mailbox)?
            .map_err(lease_err)
    }

    async fn put_artifact(
        &self,
        step_id: &str,
        epoch: i64,
        name: &str,
        bytes: Bytes,
    ) -> Result<ArtifactRef, PlaneError> {
        let m = StoreArtifact {
            worker_id: self.worker_id.clone(),
            step_id: step_id.into(),
            epoch,
            name: name.into(),
            bytes,
        };
        self.lease
            .send(m)
            .await
            .map_err(mailbox)?
            .map_err(lease_err)
    }

    async fn get_artifact(
        &self,
        step_id: &str,
        epoch: i64,
        name: &str,
    ) -> Result<Bytes, PlaneError> {
        let m = ReadArtifact {
            worker_id: self.worker_id.clone(),
            step_id: step_id.into(),
            epoch,
            name: name.into(),
        };
        self.lease
            .send(m)
            .await
            .map_err(mailbox)?
            .map_err(lease_err)
    }

    async fn complete(
        &self,
        step_id: &str,
        request: CompleteRequest,
    ) -> Result<Option<Assignment>, PlaneError> {
        let m = CompleteStep {
            worker_id: self.worker_id.clone(),
            step_id: step_id.into(),
            request,
            labels: self.labels.clone(),
        };
        self.lease
            .send(m)
            .await
            .map_err(mailbox)?
            .map_err(lease_err)
    }

    async fn release(
        &self,
        step_id: &str,
        epoch: i64,
        reason: &str,
        retry_after_ms: Option<u64>,
    ) -> Result<(), PlaneError> {
        let m = ReleaseLease {
            worker_id: self.worker_id.clone(),
            step_id: step_id.into(),
            epoch,
            reason: reason.into(),
            pause_ms: retry_after_ms,
        };
        self.lease
            .send(m)
            .await
            .map_err(mailbox)?
            .map_err(lease_err)
    }
}
