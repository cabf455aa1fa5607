//! Heartbeats kept in memory until the next offline check writes them all in one statement
//! (not one transaction per beat): the [`BeatBuffer`] holds the latest beat of each worker
//! whose status did not change, with when it arrived, so that the row says when the worker
//! was heard (the database's clock less the beat's age), not when the buffer was written: the
//! first write after a controller starts comes a whole offline period later. Owned by the
//! registry's service.

use crate::domain::WorkerStatus;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// A buffered beat as written: worker id, status, metrics JSON, and its age in ms.
pub type Beat = (String, String, Option<String>, i64);

/// Beats not yet written: worker id → (status, metrics JSON, arrival).
#[derive(Default)]
pub struct BeatBuffer {
    pending: Mutex<HashMap<String, (String, String, Instant)>>,
}

impl BeatBuffer {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, String, Instant)>> {
        match self.pending.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Notes a beat to write with the next batch (a later beat replaces an earlier one).
    pub fn note(&self, worker_id: &str, status: WorkerStatus, metrics_json: String) {
        self.lock().insert(
            worker_id.to_string(),
            (status.as_str().to_string(), metrics_json, Instant::now()),
        );
    }

    /// Drops a worker's buffered beat (its row was just written, or it went offline).
    pub fn forget(&self, worker_id: &str) {
        self.lock().remove(worker_id);
    }

    /// Everything buffered, with each beat's age, emptying the buffer.
    pub fn take(&self) -> Vec<Beat> {
        self.lock()
            .drain()
            .map(|(id, (status, metrics, at))| {
                let age = at.elapsed().as_millis().min(i64::MAX as u128) as i64;
                (id, status, Some(metrics), age)
            })
            .collect()
    }
}
