//! Leases taken back from their workers — handed back (drain), lost with a worker (offline or
//! revoked), or expired — and what follows: events, metrics, log lines, and waking claimers,
//! streams and the scheduler. Part of the LeaseActor's service.

use super::lease_service::{authorize, FollowUp, LeaseError, LeaseService};
use crate::db::events::NewEvent;
use crate::db::leases::{self, Requeued};
use crate::db::{self, DbError};
use crate::domain::events as ev;
use std::sync::atomic::Ordering;
use std::time::Duration;

impl LeaseService {
    /// Hands a lease back (worker drain): the step is queued again, no retry used.
    pub async fn release(
        &self,
        worker_id: &str,
        step_id: &str,
        epoch: i64,
        reason: &str,
    ) -> Result<(), LeaseError> {
        let (wid, sid, why) = (
            worker_id.to_string(),
            step_id.to_string(),
            reason.to_string(),
        );
        let r = self
            .db
            .tx(move |c| -> Result<_, LeaseError> {
                authorize(c, &sid, &wid, epoch)?;
                let r = leases::release(c, &sid, &wid, epoch)?;
                let now = c.now_ms()?;
                record_requeued(c, std::slice::from_ref(&r), ev::LEASE_RELEASED, &why, now)?;
                Ok(r)
            })
            .await;
        let r = r?;
        self.grants.forget(worker_id, step_id);
        self.metrics
            .lease_released_total
            .fetch_add(1, Ordering::Relaxed);
        log_released(std::slice::from_ref(&r), reason);
        self.after_requeue(&[r]);
        Ok(())
    }

    /// Takes every lease of a worker away (offline or revoked); each counts as a lost lease.
    pub async fn release_worker(&self, worker_id: &str, reason: &str) -> Result<usize, LeaseError> {
        self.grants.forget_worker(worker_id);
        let (wid, why) = (worker_id.to_string(), reason.to_string());
        let max = self.sched.max_infra_attempts as i32;
        let list = self
            .db
            .tx(move |c| -> Result<_, LeaseError> {
                let list = leases::release_all_of_worker(c, &wid, max)?;
                let now = c.now_ms()?;
                record_requeued(c, &list, ev::LEASE_RELEASED, &why, now)?;
                Ok(list)
            })
            .await?;
        self.metrics
            .lease_released_total
            .fetch_add(list.len() as u64, Ordering::Relaxed);
        log_released(&list, reason);
        self.after_requeue(&list);
        Ok(list.len())
    }

    /// Requeues every lease past its expiry — unless no sweep went through for half a lease
    /// period: this process was stopped, its host suspended or its database out of reach, so
    /// its workers could not renew through it; every lease then gets a fresh period instead,
    /// as at a controller's start, and a later sweep expires what is due after that.
    ///
    /// The database's clock is read before the pause is judged, and leases are judged due by
    /// that reading: a pause that begins after the judgement (between it and the statement
    /// that expires, as a SIGSTOP can fall anywhere) cannot make a renewed lease look due.
    pub async fn sweep(&self) -> Result<usize, LeaseError> {
        let max = self.sched.max_infra_attempts as i32;
        let ttl = self.lease.ttl_ms as i64;
        let interval = Duration::from_millis(self.lease.sweep_interval_ms);
        let gap = (Duration::from_millis(ttl as u64) / 2).max(3 * interval);
        let swept = self.swept.clone();
        let outcome = self
            .db
            .tx(move |c| -> Result<_, LeaseError> {
                let now = c.now_ms()?;
                let paused = swept.since();
                if paused > gap {
                    let extended = leases::extend_all(c, now, ttl)?;
                    return Ok(Swept::Extended { paused, extended });
                }
                let list = leases::expire_due(c, max, now)?;
                record_requeued(c, &list, ev::LEASE_EXPIRED, "expired", now)?;
                Ok(Swept::Expired(list))
            })
            .await?;
        self.swept.reset();
        let list = match outcome {
            Swept::Expired(list) => list,
            Swept::Extended { paused, extended } => {
                tracing::warn!(
                    paused_ms = paused.as_millis() as u64,
                    extended,
                    "no lease sweep for half a lease period: every lease gets a fresh period"
                );
                return Ok(0);
            }
        };
        if !list.is_empty() {
            self.metrics
                .lease_expired_total
                .fetch_add(list.len() as u64, Ordering::Relaxed);
            for r in &list {
                tracing::warn!(run_id = %r.run_id, step_id = %r.step_id, worker_id = %r.worker_id, lease_epoch = r.epoch, "lease expired");
            }
        }
        self.after_requeue(&list);
        Ok(list.len())
    }

    /// After leases were taken back: wake claimers, streams and the scheduler.
    pub(super) fn after_requeue(&self, list: &[Requeued]) {
        for r in list {
            self.hub.notify(&r.run_id);
            if r.failed || r.canceled {
                (self.follow_up)(FollowUp {
                    run_id: r.run_id.clone(),
                    decided: None,
                });
            } else {
                self.metrics
                    .step_retry_total
                    .fetch_add(1, Ordering::Relaxed);
                // Rare (a worker was lost): let every waiter look, whatever the step's labels.
                self.waiters.wake_all();
            }
        }
    }
}

/// What a sweep did: expired what was due, or gave every lease a fresh period after a pause.
enum Swept {
    Expired(Vec<Requeued>),
    Extended { paused: Duration, extended: usize },
}

/// One log line per lease taken back, naming the step, its worker and the epoch.
fn log_released(list: &[Requeued], reason: &str) {
    for r in list {
        tracing::info!(run_id = %r.run_id, step_id = %r.step_id, worker_id = %r.worker_id, lease_epoch = r.epoch, reason, "lease released");
    }
}

/// Records what happened to requeued leases as events (one per lease, plus a step failure).
fn record_requeued(
    c: &mut db::Conn,
    list: &[Requeued],
    event_type: &'static str,
    reason: &str,
    now: i64,
) -> Result<(), DbError> {
    for r in list {
        let payload = if event_type == ev::LEASE_EXPIRED {
            ev::lease_expired(&r.step_id, &r.worker_id, r.epoch)
        } else {
            ev::lease_released(&r.step_id, &r.worker_id, r.epoch, reason)
        };
        let mut events = vec![NewEvent {
            step_id: Some(r.step_id.clone()),
            event_type,
            payload,
        }];
        if r.failed {
            events.push(NewEvent {
                step_id: Some(r.step_id.clone()),
                event_type: ev::STEP_FAILED,
                payload: ev::step_failed(
                    &r.step_id,
                    None,
                    &format!("lost its lease {} times", r.infra_attempts),
                ),
            });
        }
        db::events::append_many(c, &r.run_id, &events, now)?;
    }
    Ok(())
}

/// A single host at start: its previous process and that process's runner are gone, so every
/// lease is taken back (counted as a lost lease) and recorded as released by the restart.
pub fn release_all_at_restart(c: &mut db::Conn, max_infra: i32) -> Result<Vec<Requeued>, DbError> {
    let list = leases::release_all_except(c, &[], max_infra)?;
    let now = c.now_ms()?;
    record_requeued(c, &list, ev::LEASE_RELEASED, "daemon restarted", now)?;
    Ok(list)
}
