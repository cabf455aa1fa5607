//! What the WorkerRegistryActor does: registration and per-worker tokens (stored hashed; a
//! token is `<worker_id>.<secret>` so a request names its worker), authentication of worker
//! requests (one process per token); heartbeats and marking silent workers offline (whose
//! leases are then taken back at once, not at their TTL) are in `liveness.rs`, listing and
//! revocation in `registry_admin.rs`. Tokens are checked against an in-memory copy of the
//! workers table, which this service alone writes.

use super::lease::LeaseActor;
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
    /// Since the offline check last ran (see `liveness.rs`).
    pub(super) checked: super::PauseClock,
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
            checked: super::PauseClock::new(),
        }
    }

    pub(super) fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, Known>> {
        match self.known.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Loads the workers at start and gives every online one a fresh heartbeat and its leases
    /// a fresh lease period: a controller that was down must neither declare its whole pool
    /// offline nor expire the steps its workers kept running the moment it returns.
    pub async fn load(&self) -> Result<(), RegistryError> {
        let ttl = self.lease.ttl_ms as i64;
        let rows = self
            .db
            .tx(move |c| {
                let now = c.now_ms()?;
                let rows = db::workers::all(c)?;
                let mut online = Vec::new();
                for w in rows
                    .iter()
                    .filter(|w| w.status != "offline" && w.status != "revoked")
                {
                    db::workers::touch(c, &w.id, &w.status, w.metrics_json.as_deref(), now)?;
                    online.push(w.id.clone());
                }
                db::leases::extend_of_workers(c, &online, ttl)?;
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
        let instance = instance.filter(|i| !i.is_empty());
        let mut known = self.known();
        let k = known.get_mut(id).ok_or(RegistryError::Unauthorized)?;
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
        if let (None, Some(first)) = (&k.instance_id, instance) {
            // Registered without an instance id: the first process to present one owns the
            // token from now on, so a second process using a copy of it is refused.
            k.instance_id = Some(first.to_string());
            self.persist_instance(id, first);
        }
        Ok(WorkerIdentity {
            worker_id: id.to_string(),
            labels: k.labels.clone(),
        })
    }

    /// Stores the instance a worker was pinned to (so a restarted controller keeps the pin).
    fn persist_instance(&self, worker_id: &str, instance: &str) {
        let (db, wid, inst) = (self.db.clone(), worker_id.to_string(), instance.to_string());
        tokio::spawn(async move {
            let r = db
                .run(move |c| db::workers::pin_instance(c, &wid, &inst))
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "cannot store a worker's instance id");
            }
        });
    }

    /// Workers that are idle, busy or draining.
    pub fn online_count(&self) -> usize {
        self.known()
            .values()
            .filter(|k| k.status.is_online())
            .count()
    }
}
