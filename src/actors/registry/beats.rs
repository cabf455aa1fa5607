//! Heartbeats kept in memory until the next offline check writes them all in one statement
//! (not one transaction per beat): the [`BeatBuffer`] holds the latest beat of each worker
//! whose status did not change. Owned by the registry's service.

use crate::domain::WorkerStatus;
use std::collections::HashMap;
use std::sync::Mutex;

/// Beats not yet written: worker id → (status, metrics JSON).
#[derive(Default)]
pub struct BeatBuffer {
    pending: Mutex<HashMap<String, (String, String)>>,
}

impl BeatBuffer {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, String)>> {
        match self.pending.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Notes a beat to write with the next batch (a later beat replaces an earlier one).
    pub fn note(&self, worker_id: &str, status: WorkerStatus, metrics_json: String) {
        self.lock().insert(
            worker_id.to_string(),
            (status.as_str().to_string(), metrics_json),
        );
    }

    /// Drops a worker's buffered beat (its row was just written, or it went offline).
    pub fn forget(&self, worker_id: &str) {
        self.lock().remove(worker_id);
    }

    /// Everything buffered, emptying the buffer.
    pub fn take(&self) -> Vec<(String, String, Option<String>)> {
        self.lock()
            .drain()
            .map(|(id, (status, metrics))| (id, status, Some(metrics)))
            .collect()
    }
}
