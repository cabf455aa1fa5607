//! The registry's view for operators and its loss handling: listing workers with their leases,
//! and revoking a worker (its leases are taken back at once). Part of the
//! WorkerRegistryActor's service; heartbeats and offline marking are in `liveness.rs`.

use super::lease::ReleaseWorkerLeases;
use super::registry_service::{RegistryError, RegistryService};
use crate::db::models::WorkerRow;
use crate::db::{self, DbError};
use crate::domain::WorkerStatus;

impl RegistryService {
    /// Every worker with the leases it holds.
    pub async fn list(&self) -> Result<Vec<(WorkerRow, Vec<db::models::LeaseRow>)>, RegistryError> {
        // Shown heartbeat times are current.
        self.flush_beats().await?;
        let out = self
            .db
            .run(|c| {
                let workers = db::workers::all(c)?;
                let leases = db::leases::all(c)?;
                Ok::<_, DbError>(
                    workers
                        .into_iter()
                        .map(|w| {
                            let held = leases
                                .iter()
                                .filter(|l| l.worker_id == w.id)
                                .cloned()
                                .collect();
                            (w, held)
                        })
                        .collect(),
                )
            })
            .await?;
        Ok(out)
    }

    /// Revokes a worker's token and takes its leases back.
    pub async fn revoke(&self, worker_id: &str) -> Result<(), RegistryError> {
        let wid = worker_id.to_string();
        let found = self
            .db
            .run(move |c| db::workers::set_status(c, &wid, "revoked"))
            .await?;
        if !found {
            return Err(RegistryError::NotFound);
        }
        if let Some(k) = self.known().get_mut(worker_id) {
            k.status = WorkerStatus::Revoked;
        }
        self.take_leases(worker_id, "worker revoked").await;
        tracing::info!(worker_id, "worker revoked");
        Ok(())
    }

    pub(super) async fn take_leases(&self, worker_id: &str, reason: &str) {
        let r = self
            .leases
            .send(ReleaseWorkerLeases {
                worker_id: worker_id.into(),
                reason: reason.into(),
            })
            .await;
        if !matches!(r, Ok(Ok(_))) {
            tracing::error!(
                worker_id,
                "cannot release the leases of a lost worker (they will expire)"
            );
        }
    }
}
