//! The registry's cache of the workers table: per worker, its token's hash, the process it is
//! pinned to, its status and labels. Only a cache: the table is the truth, shared by every
//! controller on the database. A worker this process has not seen (it registered through
//! another controller) is read from the table on its first request; a worker whose status
//! another controller changed (marked offline, revoked) is dropped from here when that
//! controller's notice arrives, and read again on its next request. Worker tokens are checked
//! here (`<worker_id>.<secret>`, stored hashed, compared in constant time). Silence is judged
//! from the table (`service.rs`), where every controller's beats are written. Owned by
//! `service.rs`.

use super::error::RegistryError;
use crate::db::models::{decode_labels, WorkerRow};
use crate::domain::WorkerStatus;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;

/// A worker as the registry remembers it.
#[derive(Debug, Clone)]
struct Known {
    token_hash: String,
    instance_id: Option<String>,
    status: WorkerStatus,
    labels: Vec<String>,
}

/// An authenticated worker.
#[derive(Debug, Clone)]
pub struct WorkerIdentity {
    pub worker_id: String,
    pub labels: Vec<String>,
}

/// The hash a worker token is stored as.
pub fn hash(token: &str) -> String {
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

/// The workers the registry knows, by id.
#[derive(Default)]
pub struct KnownWorkers {
    map: Mutex<HashMap<String, Known>>,
}

impl KnownWorkers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Known>> {
        match self.map.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Remembers workers as the table has them (at start, or read on a first request).
    pub fn load(&self, rows: Vec<WorkerRow>) {
        let mut known = self.lock();
        for w in rows {
            let status = w.status.parse().unwrap_or(WorkerStatus::Offline);
            known.insert(
                w.id,
                Known {
                    token_hash: w.token_hash,
                    instance_id: w.instance_id,
                    status,
                    labels: decode_labels(&w.labels),
                },
            );
        }
    }

    /// Remembers a worker that just registered (idle, heard from now).
    pub fn registered(
        &self,
        id: &str,
        token_hash: String,
        instance_id: Option<String>,
        labels: Vec<String>,
    ) {
        self.lock().insert(
            id.to_string(),
            Known {
                token_hash,
                instance_id,
                status: WorkerStatus::Idle,
                labels,
            },
        );
    }

    /// Checks a worker token (and the path's worker id, when the route has one). The second
    /// value is the instance the worker was just pinned to, for the caller to store: a worker
    /// registered without an instance id is pinned to the first process that presents one.
    pub fn authenticate(
        &self,
        token: &str,
        path_worker: Option<&str>,
        instance: Option<&str>,
    ) -> Result<(WorkerIdentity, Option<String>), RegistryError> {
        let id = token
            .split_once('.')
            .map(|(id, _)| id)
            .ok_or(RegistryError::Unauthorized)?;
        let instance = instance.filter(|i| !i.is_empty());
        let mut known = self.lock();
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
        let mut pinned = None;
        if let (None, Some(first)) = (&k.instance_id, instance) {
            // Registered without an instance id: the first process to present one owns the
            // token from now on, so a second process using a copy of it is refused.
            k.instance_id = Some(first.to_string());
            pinned = Some(first.to_string());
        }
        let identity = WorkerIdentity {
            worker_id: id.to_string(),
            labels: k.labels.clone(),
        };
        Ok((identity, pinned))
    }

    /// A heartbeat from an online worker: heard from now. Returns whether its status changed;
    /// when it did not, `unchanged` runs under the same lock (the beat is buffered before an
    /// offline check can judge the worker).
    pub fn beat(
        &self,
        worker_id: &str,
        status: WorkerStatus,
        unchanged: impl FnOnce(),
    ) -> Result<bool, RegistryError> {
        let mut known = self.lock();
        let k = known.get_mut(worker_id).ok_or(RegistryError::Offline)?;
        if !k.status.is_online() {
            return Err(RegistryError::Offline);
        }
        let changed = k.status != status;
        if !changed {
            unchanged();
        }
        Ok(changed)
    }

    /// Records a new status of a worker that is still online.
    pub fn set_online_status(&self, worker_id: &str, status: WorkerStatus) {
        if let Some(k) = self.lock().get_mut(worker_id) {
            if k.status.is_online() {
                k.status = status;
            }
        }
    }

    /// Marks workers offline (the table already says so).
    pub fn offline(&self, ids: &[String]) {
        let mut known = self.lock();
        for id in ids {
            if let Some(k) = known.get_mut(id) {
                if k.status.is_online() {
                    k.status = WorkerStatus::Offline;
                }
            }
        }
    }

    /// Whether this worker is cached.
    pub fn contains(&self, worker_id: &str) -> bool {
        self.lock().contains_key(worker_id)
    }

    /// Drops a worker (another controller changed it): its next request reads it again.
    pub fn forget(&self, worker_id: &str) {
        self.lock().remove(worker_id);
    }

    /// Drops every worker (notices may have been missed).
    pub fn forget_all(&self) {
        self.lock().clear();
    }

    /// A revoked worker's token is refused from now on.
    pub fn revoke(&self, worker_id: &str) {
        if let Some(k) = self.lock().get_mut(worker_id) {
            k.status = WorkerStatus::Revoked;
        }
    }
}
