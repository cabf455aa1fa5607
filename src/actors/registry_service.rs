//! What the WorkerRegistryActor does: registration and per-worker tokens (stored hashed; a
//! token is `<worker_id>.<secret>` so a request names its worker), authentication of worker
//! requests, revocation; heartbeats and marking silent workers offline (whose leases are then
//! taken back at once, not at their TTL) are in `liveness.rs`. Tokens are checked against an in-memory copy of
//! the workers table, which this service alone writes.

use super::lease::{LeaseActor, ReleaseWorkerLeases};
use super::liveness::BeatBuffer;
use crate::api::{RegisterRequest, RegisterResponse};
use crate::db::models::{decode_labels, encode_labels, new_id, WorkerRow};
use crate::db::{self, Db, DbError};
use crate::domain::events as ev;
use crate::domain::WorkerStatus;
use crate::metrics::Metrics;
use crate::settings::{LeaseSettings, WorkerSettings};
use actix::Addr;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

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
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("lease owner unavailable: {0}")]
    Lease(String),
}

/// A worker as the registry remembers it.
#[derive(Debug, Clone)]
pub(super) struct Known {
    token_hash: String,
    instance_id: Option<String>,
    pub(super) status: WorkerStatus,
    labels: Vec<String>,
    /// When its last heartbeat arrived (or it registered, or this process started).
    pub(super) seen: Instant,
}

/// An authenticated worker.
#[derive(Debug, Clone)]
pub struct WorkerIdentity {
    pub worker_id: String,
    pub labels: Vec<String>,
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Constant-time comparison of two hex digests.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The registry's logic.
pub struct RegistryService {
    pub db: Db,
    pub metrics: Arc<Metrics>,
    pub lease: LeaseSettings,
    pub worker: WorkerSettings,
    pub leases: Addr<LeaseActor>,
    known: Mutex<HashMap<String, Known>>,
    /// Heartbeats not yet written (see `liveness.rs`).
    pub(super) beats: BeatBuffer,
}

impl RegistryService {
    pub fn new(
        db: Db,
        metrics: Arc<Metrics>,
        lease: LeaseSettings,
        worker: WorkerSettings,
        leases: Addr<LeaseActor>,
    ) -> Self {
        RegistryService {
            db,
            metrics,
            lease,
            worker,
            leases,
            known: Mutex::new(HashMap::new()),
            beats: BeatBuffer::default(),
        }
    }

    pub(super) fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, Known>> {
        match self.known.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Loads the workers at start and gives every online one a fresh heartbeat: a controller
    /// that was down must not declare its whole pool offline the moment it returns.
    pub async fn load(&self) -> Result<(), RegistryError> {
        let rows = self
            .db
            .tx(|c| {
                let now = c.now_ms()?;
                let rows = db::workers::all(c)?;
                for w in rows
                    .iter()
                    .filter(|w| w.status != "offline" && w.status != "revoked")
                {
                    db::workers::touch(c, &w.id, &w.status, w.metrics_json.as_deref(), now)?;
                }
                Ok::<_, DbError>(rows)
            })
            .await?;
        let mut known = self.known();
        for w in rows {
            let status = w.status.parse().unwrap_or(WorkerStatus::Offline);
            known.insert(
                w.id,
                Known {
                    token_hash: w.token_hash,
                    instance_id: w.instance_id,
                    status,
                    labels: decode_labels(&w.labels),
                    seen: Instant::now(),
                },
            );
        }
        Ok(())
    }

    /// Registers a worker process: a fresh id and token (shown only in this answer).
    pub async fn register(&self, req: RegisterRequest) -> Result<RegisterResponse, RegistryError> {
        let printable = |s: &str| !s.chars().any(char::is_control);
        if !printable(&req.hostname)
            || !printable(&req.capabilities.version)
            || req.capabilities.version.len() > 255
        {
            return Err(RegistryError::Invalid(
                "hostname and version must be printable text".into(),
            ));
        }
        if req
            .capabilities
            .labels
            .iter()
            .any(|l| l.is_empty() || l.len() > 64 || !printable(l) || l.contains(','))
        {
            return Err(RegistryError::Invalid(
                "labels must be 1-64 printable characters without commas".into(),
            ));
        }
        if req.hostname.trim().is_empty() || req.hostname.len() > 255 {
            return Err(RegistryError::Invalid(
                "hostname must be 1-255 characters".into(),
            ));
        }
        if req.capabilities.slots == 0 || req.capabilities.slots > 1024 {
            return Err(RegistryError::Invalid(
                "capabilities.slots must be between 1 and 1024".into(),
            ));
        }
        let id = new_id();
        let secret = format!(
            "{:032x}{:032x}",
            rand::random::<u128>(),
            rand::random::<u128>()
        );
        let token = format!("{id}.{secret}");
        let labels = encode_labels(&req.capabilities.labels);
        let row_labels = labels.clone();
        let (wid, h, inst) = (id.clone(), hash(&token), req.instance_id.clone());
        let hostname = req.hostname.clone();
        let caps = req.capabilities.clone();
        self.db
            .tx(move |c| {
                let now = c.now_ms()?;
                db::workers::insert(
                    c,
                    &WorkerRow {
                        id: wid.clone(),
                        hostname: hostname.clone(),
                        token_hash: h,
                        instance_id: inst,
                        labels: row_labels,
                        slots: caps.slots as i32,
                        version: caps.version.clone(),
                        status: "idle".into(),
                        registered_at: now,
                        last_heartbeat_at: now,
                        metrics_json: None,
                    },
                )?;
                db::events::append(
                    c,
                    None,
                    None,
                    ev::WORKER_REGISTERED,
                    &ev::worker_registered(&wid, &hostname),
                    now,
                )?;
                Ok::<_, DbError>(())
            })
            .await?;
        self.known().insert(
            id.clone(),
            Known {
                token_hash: hash(&token),
                instance_id: req.instance_id,
                status: WorkerStatus::Idle,
                labels: decode_labels(&labels),
                seen: Instant::now(),
            },
        );
        tracing::info!(worker_id = %id, hostname = %req.hostname, "worker registered");
        Ok(RegisterResponse {
            worker_id: id,
            token,
            heartbeat_interval_ms: self.worker.heartbeat_interval_ms,
            lease_ttl_ms: self.lease.ttl_ms,
        })
    }

    /// Registers this process's own runner (role single): no token needed in-process.
    pub async fn register_local(
        &self,
        labels: &[String],
        slots: u32,
    ) -> Result<String, RegistryError> {
        let r = self
            .register(RegisterRequest {
                hostname: nix::unistd::gethostname()
                    .map(|h| h.to_string_lossy().to_string())
                    .unwrap_or_else(|_| "localhost".into()),
                capabilities: crate::api::Capabilities {
                    labels: labels.to_vec(),
                    slots,
                    version: env!("CARGO_PKG_VERSION").into(),
                },
                instance_id: None,
            })
            .await?;
        Ok(r.worker_id)
    }

    /// Checks a worker token (and the path's worker id, when the route has one).
    pub fn authenticate(
        &self,
        token: &str,
        path_worker: Option<&str>,
        instance: Option<&str>,
    ) -> Result<WorkerIdentity, RegistryError> {
        let id = token
            .split_once('.')
            .map(|(id, _)| id)
            .ok_or(RegistryError::Unauthorized)?;
        let known = self.known();
        let k = known.get(id).ok_or(RegistryError::Unauthorized)?;
        if !same(&k.token_hash, &hash(token)) || k.status == WorkerStatus::Revoked {
            return Err(RegistryError::Unauthorized);
        }
        if path_worker.is_some_and(|p| p != id) {
            return Err(RegistryError::Forbidden);
        }
        if let Some(expected) = &k.instance_id {
            if instance != Some(expected.as_str()) {
                return Err(RegistryError::DuplicateInstance);
            }
        }
        if k.status == WorkerStatus::Offline {
            return Err(RegistryError::Offline);
        }
        Ok(WorkerIdentity {
            worker_id: id.to_string(),
            labels: k.labels.clone(),
        })
    }

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

    /// Workers that are idle, busy or draining.
    pub fn online_count(&self) -> usize {
        self.known()
            .values()
            .filter(|k| k.status.is_online())
            .count()
    }
}
