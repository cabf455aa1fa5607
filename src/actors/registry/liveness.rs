//! Heartbeats kept in memory: the registry notes when each worker was last heard from (a
//! monotonic instant in its in-memory copy of the workers table) and buffers what the worker
//! reported; the buffer is written to the database in one statement per offline check, not
//! one transaction per beat. A status change is still written at once, with its event.
//! Whether a worker is silent is decided from the in-memory instants, after the buffer was
//! written, so the database never holds an older view than the decision used.

use super::lease::RenewLeases;
use super::registry_service::{RegistryError, RegistryService};
use crate::api::{HeartbeatRequest, HeartbeatResponse};
use crate::db::{self, DbError};
use crate::domain::events as ev;
use crate::domain::WorkerStatus;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

impl RegistryService {
    /// Records a heartbeat and renews the leases it lists (and takes back those it should list
    /// and does not: see `unreported.rs`). An unchanged status is only noted in memory (written
    /// with the next batch); a change is written at once, with its event.
    pub async fn heartbeat(
        &self,
        worker_id: &str,
        req: HeartbeatRequest,
    ) -> Result<HeartbeatResponse, RegistryError> {
        if !req.status.is_online() {
            return Err(RegistryError::Invalid(
                "status must be idle, busy or draining".into(),
            ));
        }
        self.metrics
            .heartbeats_total
            .fetch_add(1, Ordering::Relaxed);
        let metrics = serde_json::Value::Object(req.metrics);
        let status = req.status;
        let changed = {
            let mut known = self.known();
            let k = known.get_mut(worker_id).ok_or(RegistryError::Offline)?;
            if !k.status.is_online() {
                return Err(RegistryError::Offline);
            }
            k.seen = Instant::now();
            let changed = k.status != status;
            if !changed {
                self.beats.note(worker_id, status, metrics.to_string());
            }
            changed
        };
        if changed {
            self.beats.forget(worker_id);
            let wid = worker_id.to_string();
            let alive = self
                .db
                .run(move |c| {
                    let now = c.now_ms()?;
                    let m = metrics.to_string();
                    let alive = db::workers::touch(c, &wid, status.as_str(), Some(&m), now)?;
                    if alive {
                        let p = ev::worker_heartbeat(&wid, status.as_str(), &metrics);
                        db::events::append(c, None, None, ev::WORKER_HEARTBEAT, &p, now)?;
                    }
                    Ok::<_, DbError>(alive)
                })
                .await?;
            if !alive {
                return Err(RegistryError::Offline);
            }
            if let Some(k) = self.known().get_mut(worker_id) {
                if k.status.is_online() {
                    k.status = status;
                }
            }
        }
        // Even an empty list goes to the LeaseActor: it checks it against what it granted
        // (in memory; the database only when a grant went unreported).
        let verdicts = self
            .leases
            .send(RenewLeases {
                worker_id: worker_id.to_string(),
                leases: req.leases,
            })
            .await
            .map_err(|e| RegistryError::Lease(e.to_string()))?
            .map_err(|e| RegistryError::Lease(e.to_string()))?;
        Ok(HeartbeatResponse { leases: verdicts })
    }

    /// The instant this check judges silence at — or `None` when it comes more than `gap`
    /// after the previous one (or the start of the checks): this process was paused and the
    /// beats sent meanwhile waited in its sockets, so the silence is its own, not its
    /// workers'. Every online worker then gets a fresh period.
    ///
    /// The instant is taken before the pause is judged: a pause that begins after the
    /// judgement (while the beats are flushed, say) cannot make a worker look silent.
    fn unpaused_instant(&self, gap: Duration) -> Option<Instant> {
        let at = Instant::now();
        let paused = self.checked.since();
        self.checked.reset();
        if paused <= gap {
            return Some(at);
        }
        let now = Instant::now();
        let mut known = self.known();
        for k in known.values_mut().filter(|k| k.status.is_online()) {
            k.seen = now;
        }
        tracing::warn!(
            paused_ms = paused.as_millis() as u64,
            "no offline check for half the offline limit: every online worker gets a fresh period"
        );
        None
    }

    /// The offline checks begin: the first is measured from now.
    pub fn checks_begin(&self) {
        self.checked.reset();
    }

    /// Writes the buffered beats (the time they are written at is the database's clock).
    pub async fn flush_beats(&self) -> Result<(), RegistryError> {
        let beats = self.beats.take();
        if beats.is_empty() {
            return Ok(());
        }
        self.db
            .run(move |c| {
                let now = c.now_ms()?;
                db::workers::touch_many(c, &beats, now)
            })
            .await?;
        Ok(())
    }

    /// Marks workers silent for longer than `worker_offline_after_ms` offline and takes their
    /// leases back.
    pub async fn mark_silent_offline(&self) -> Result<usize, RegistryError> {
        let after = self.lease.worker_offline_after_ms;
        let limit = Duration::from_millis(after);
        let Some(at) = self.unpaused_instant(limit / 2) else {
            return Ok(0);
        };
        self.flush_beats().await?;
        // Decided and recorded in memory under one lock: a beat that comes later is refused.
        let silent: Vec<(String, WorkerStatus)> = {
            let mut known = self.known();
            known
                .iter_mut()
                .filter(|(_, k)| {
                    k.status.is_online() && at.saturating_duration_since(k.seen) > limit
                })
                .map(|(id, k)| {
                    (
                        id.clone(),
                        std::mem::replace(&mut k.status, WorkerStatus::Offline),
                    )
                })
                .collect()
        };
        if silent.is_empty() {
            return Ok(0);
        }
        for (id, _) in &silent {
            self.beats.forget(id);
        }
        let ids: Vec<String> = silent.iter().map(|(id, _)| id.clone()).collect();
        let written = self
            .db
            .tx(move |c| {
                let now = c.now_ms()?;
                for id in &ids {
                    db::workers::set_status(c, id, "offline")?;
                    let p = ev::worker_offline(id, &format!("no heartbeat for {after} ms"));
                    db::events::append(c, None, None, ev::WORKER_OFFLINE, &p, now)?;
                }
                Ok::<_, DbError>(())
            })
            .await;
        if let Err(e) = written {
            // Not recorded: they stay online (and silent) for the next check to retry.
            let mut known = self.known();
            for (id, was) in &silent {
                if let Some(k) = known.get_mut(id) {
                    k.status = *was;
                }
            }
            return Err(e.into());
        }
        for (id, _) in &silent {
            tracing::warn!(worker_id = %id, "worker offline");
            self.take_leases(id, "worker offline").await;
        }
        Ok(silent.len())
    }
}
