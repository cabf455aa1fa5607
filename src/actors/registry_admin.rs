//! The registry's view for operators and its loss handling: listing workers with their leases,
//! revoking a worker, and marking silent workers offline — whose leases are then taken back at
//! once, not at their TTL. Part of the WorkerRegistryActor's service.

use super::lease::ReleaseWorkerLeases;
use super::registry_service::{RegistryError, RegistryService};
use crate::db::models::WorkerRow;
use crate::db::{self, DbError};
use crate::domain::events as ev;
use crate::domain::WorkerStatus;

impl RegistryService {
    /// Every worker with the leases it holds.
    pub async fn list(&self) -> Result<Vec<(WorkerRow, Vec<db::models::LeaseRow>)>, RegistryError> {
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

    /// Brings the single role's in-process worker back after it was marked offline (the
    /// process was suspended longer than `worker_offline_after_ms`): its leases were taken back
    /// already; from now on it claims and heartbeats again. Remote workers register again
    /// instead.
    pub async fn revive_local(&self, worker_id: &str) -> Result<(), RegistryError> {
        let wid = worker_id.to_string();
        let revived = self
            .db
            .tx(move |c| {
                let now = c.now_ms()?;
                let revived = db::workers::revive(c, &wid, now)?;
                if revived {
                    let p = ev::worker_heartbeat(&wid, "idle", &serde_json::json!({}));
                    db::events::append(c, None, None, ev::WORKER_HEARTBEAT, &p, now)?;
                }
                Ok::<_, DbError>(revived)
            })
            .await?;
        if !revived {
            return Err(RegistryError::Offline);
        }
        if let Some(k) = self.known().get_mut(worker_id) {
            k.status = WorkerStatus::Idle;
        }
        tracing::warn!(
            worker_id,
            "the in-process worker was marked offline: back online"
        );
        Ok(())
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

    /// Marks workers silent for longer than `worker_offline_after_ms` offline.
    pub async fn mark_silent_offline(&self) -> Result<usize, RegistryError> {
        let after = self.lease.worker_offline_after_ms as i64;
        let gone = self
            .db
            .tx(move |c| {
                let now = c.now_ms()?;
                let silent = db::workers::silent_since(c, now - after)?;
                for w in &silent {
                    db::workers::set_status(c, &w.id, "offline")?;
                    let p = ev::worker_offline(&w.id, &format!("no heartbeat for {after} ms"));
                    db::events::append(c, None, None, ev::WORKER_OFFLINE, &p, now)?;
                }
                Ok::<_, DbError>(silent)
            })
            .await?;
        for w in &gone {
            if let Some(k) = self.known().get_mut(&w.id) {
                k.status = WorkerStatus::Offline;
            }
            tracing::warn!(worker_id = %w.id, "worker offline");
            self.take_leases(&w.id, "worker offline").await;
        }
        Ok(gone.len())
    }

    async fn take_leases(&self, worker_id: &str, reason: &str) {
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
