//! What the LeaseActor does, as async methods over the database: claim (with long polling),
//! renew, complete, release, expire, and the epoch check in front of every worker write. The
//! actor in `lease.rs` owns one `LeaseService` and forwards its messages here.

use super::assignment;
use super::events::EventHub;
use super::waiters::WaitQueue;
use crate::api::{Assignment, CompleteRequest, HeldLease, LeaseVerdict};
use crate::artifacts::ArtifactStore;
use crate::db::events::NewEvent;
use crate::db::leases::{self, ClaimSpec, Requeued};
use crate::db::models::{LeaseRow, StepRow};
use crate::db::{self, Db, DbError};
use crate::domain::events as ev;
use crate::domain::time::rfc3339;
use crate::domain::LeaseAction;
use crate::metrics::Metrics;
use crate::output_store::OutputStore;
use crate::settings::{LeaseSettings, SchedulerSettings};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a lease operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("stale lease: the step is no longer leased to this worker at this epoch")]
    Stale,
    #[error("the step is leased to another worker")]
    Forbidden,
    #[error("no such step")]
    NotFound,
    #[error("{0}")]
    Invalid(String),
    /// Output written past what the controller holds: resend from this offset.
    #[error("output offset is past the {0} bytes held")]
    OffsetGap(u64),
    #[error(transparent)]
    Db(DbError),
    /// The artifact store failed the request after its own retries.
    #[error("artifact store unavailable: {0}")]
    Store(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<DbError> for LeaseError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::StaleLease => LeaseError::Stale,
            DbError::NotFound => LeaseError::NotFound,
            other => LeaseError::Db(other),
        }
    }
}

/// Who the service tells about finished steps (the scheduler).
pub type StepFinishedSink = Arc<dyn Fn(String) + Send + Sync>;

/// The lease logic and everything it needs.
pub struct LeaseService {
    pub db: Db,
    pub hub: EventHub,
    pub metrics: Arc<Metrics>,
    pub output: OutputStore,
    pub store: ArtifactStore,
    pub lease: LeaseSettings,
    pub sched: SchedulerSettings,
    pub waiters: WaitQueue,
    pub step_finished: StepFinishedSink,
}

/// What a LeaseService is built from.
pub struct LeaseServiceParts {
    pub db: Db,
    pub hub: EventHub,
    pub metrics: Arc<Metrics>,
    pub output: OutputStore,
    pub store: ArtifactStore,
    pub lease: LeaseSettings,
    pub sched: SchedulerSettings,
    pub step_finished: StepFinishedSink,
}

impl LeaseService {
    pub fn new(p: LeaseServiceParts) -> Self {
        LeaseService {
            db: p.db,
            hub: p.hub,
            metrics: p.metrics,
            output: p.output,
            store: p.store,
            lease: p.lease,
            sched: p.sched,
            waiters: WaitQueue::default(),
            step_finished: p.step_finished,
        }
    }
}

/// The lease a write carries must be the step's live lease, held by `worker_id`. Another
/// worker's live lease at the same epoch is `Forbidden`; anything else is `Stale`.
pub fn authorize(
    c: &mut db::Conn,
    step_id: &str,
    worker_id: &str,
    epoch: i64,
) -> Result<(StepRow, LeaseRow), LeaseError> {
    let step = db::steps::get(c, step_id)?.ok_or(LeaseError::NotFound)?;
    match leases::check(c, step_id, worker_id, epoch) {
        Ok(l) => Ok((step, l)),
        Err(DbError::StaleLease) => match leases::get(c, step_id)? {
            Some(l) if l.worker_id != worker_id && l.epoch == epoch => Err(LeaseError::Forbidden),
            _ => Err(LeaseError::Stale),
        },
        Err(e) => Err(e.into()),
    }
}

impl LeaseService {
    /// Claims a step for a worker, waiting up to `wait` for one to be queued.
    pub async fn claim(
        &self,
        worker_id: &str,
        labels: &[String],
        wait: Duration,
    ) -> Result<Option<Assignment>, LeaseError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut ticket = self.waiters.register(worker_id, labels);
            let got = self.try_claim(worker_id, labels).await;
            if !matches!(got, Ok(None)) {
                self.waiters.remove(ticket.id);
                if ticket.woken.try_recv().is_ok() {
                    // Woken for a step we did not take: let someone else have a look.
                    self.waiters.wake_any();
                }
                self.metrics
                    .claim_wait
                    .observe(started.elapsed().as_secs_f64());
                return got;
            }
            tokio::select! {
                _ = &mut ticket.woken => continue,
                _ = tokio::time::sleep_until(deadline) => {
                    self.waiters.remove(ticket.id);
                    self.metrics.claim_wait.observe(started.elapsed().as_secs_f64());
                    return Ok(None);
                }
            }
        }
    }

    /// One claim attempt: lease the oldest matching step, record it, build the assignment.
    async fn try_claim(
        &self,
        worker_id: &str,
        labels: &[String],
    ) -> Result<Option<Assignment>, LeaseError> {
        let (wid, lbl) = (worker_id.to_string(), labels.to_vec());
        let (ttl, window) = (
            self.lease.ttl_ms as i64,
            self.sched.affinity_window_ms as i64,
        );
        let output = self.output.clone();
        let got = self
            .db
            .tx(move |c| -> Result<_, LeaseError> {
                let spec = ClaimSpec {
                    worker_id: &wid,
                    labels: &lbl,
                    ttl_ms: ttl,
                    affinity_window_ms: window,
                };
                let Some(g) = leases::claim(c, &spec)? else {
                    return Ok(None);
                };
                let run = db::runs::require(c, &g.step.run_id)?;
                let state = db::runs::state(c, &run.id)?;
                let s = &g.step;
                db::events::append_many(
                    c,
                    &run.id,
                    &[
                        NewEvent {
                            step_id: Some(&s.id),
                            event_type: ev::LEASE_GRANTED,
                            payload: ev::lease_granted(
                                &s.id,
                                &wid,
                                g.lease.epoch,
                                &rfc3339(g.lease.expires_at),
                            ),
                        },
                        NewEvent {
                            step_id: Some(&s.id),
                            event_type: ev::STEP_STARTED,
                            payload: ev::step_started(
                                &s.id,
                                &s.phase,
                                s.attempt,
                                &wid,
                                g.lease.epoch,
                            ),
                        },
                    ],
                    g.now_ms,
                )?;
                let offset = output.size(&run.id, &s.id);
                Ok(Some((g, run, state, offset)))
            })
            .await?;
        let Some((g, run, state, offset)) = got else {
            return Ok(None);
        };
        self.metrics
            .step_dispatch
            .observe((g.now_ms - g.step.queued_at).max(0) as f64 / 1000.0);
        tracing::info!(run_id = %run.id, step_id = %g.step.id, worker_id, lease_epoch = g.lease.epoch, phase = %g.step.phase, "lease granted");
        self.hub.notify(&run.id);
        assignment::build(&run, &state, &g.step, &g.lease, offset)
            .map(Some)
            .map_err(LeaseError::Internal)
    }

    /// Renews the leases a worker reports and says what to do with each.
    pub async fn renew(
        &self,
        worker_id: &str,
        held: Vec<HeldLease>,
    ) -> Result<Vec<LeaseVerdict>, LeaseError> {
        let wid = worker_id.to_string();
        let ttl = self.lease.ttl_ms as i64;
        let verdicts = self
            .db
            .tx(move |c| -> Result<_, LeaseError> {
                let mut out = Vec::with_capacity(held.len());
                for h in held {
                    let (action, expires) = match leases::renew(c, &h.step_id, &wid, h.epoch, ttl) {
                        Ok(l) => {
                            let canceled = match db::steps::get(c, &h.step_id)? {
                                Some(s) => db::runs::get(c, &s.run_id)?
                                    .is_some_and(|r| r.status == "CANCELED"),
                                None => false,
                            };
                            let action = if canceled {
                                LeaseAction::Cancel
                            } else {
                                LeaseAction::Continue
                            };
                            (action, Some(rfc3339(l.expires_at)))
                        }
                        Err(DbError::StaleLease) => (LeaseAction::Stop, None),
                        Err(e) => return Err(e.into()),
                    };
                    out.push(LeaseVerdict {
                        step_id: h.step_id,
                        epoch: h.epoch,
                        expires_at: expires,
                        action,
                    });
                }
                Ok(out)
            })
            .await?;
        Ok(verdicts)
    }

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
        self.metrics
            .lease_released_total
            .fetch_add(1, Ordering::Relaxed);
        self.after_requeue(&[r]);
        Ok(())
    }

    /// Takes every lease of a worker away (offline or revoked); each counts as a lost lease.
    pub async fn release_worker(&self, worker_id: &str, reason: &str) -> Result<usize, LeaseError> {
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
        self.after_requeue(&list);
        Ok(list.len())
    }

    /// Requeues every lease past its expiry.
    pub async fn sweep(&self) -> Result<usize, LeaseError> {
        let max = self.sched.max_infra_attempts as i32;
        let list = self
            .db
            .tx(move |c| -> Result<_, LeaseError> {
                let list = leases::expire_due(c, max)?;
                let now = c.now_ms()?;
                record_requeued(c, &list, ev::LEASE_EXPIRED, "expired", now)?;
                Ok(list)
            })
            .await?;
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
    fn after_requeue(&self, list: &[Requeued]) {
        for r in list {
            self.hub.notify(&r.run_id);
            if r.failed || r.canceled {
                (self.step_finished)(r.run_id.clone());
            } else {
                self.metrics
                    .step_retry_total
                    .fetch_add(1, Ordering::Relaxed);
                // Rare (a worker was lost): let every waiter look, whatever the step's labels.
                self.waiters.wake_all();
            }
        }
    }

    /// A step was queued or became claimable: wake one claimer that may take it.
    pub fn queue_changed(self: &Arc<Self>, required_labels: &str, preferred: Option<&str>) {
        let woken = self.waiters.wake(required_labels, preferred);
        if preferred.is_some() && woken.as_deref() != preferred {
            // The step waits for its previous worker for a while; look again after that.
            let window = Duration::from_millis(self.sched.affinity_window_ms + 5);
            let labels = required_labels.to_string();
            let me = Arc::downgrade(self);
            tokio::spawn(async move {
                tokio::time::sleep(window).await;
                if let Some(svc) = me.upgrade() {
                    svc.waiters.wake(&labels, None);
                }
            });
        }
    }
}

/// Records what happened to requeued leases as events (one per lease, plus a step failure).
fn record_requeued(
    c: &mut db::Conn,
    list: &[Requeued],
    event_type: &str,
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
            step_id: Some(&r.step_id),
            event_type,
            payload,
        }];
        if r.failed {
            events.push(NewEvent {
                step_id: Some(&r.step_id),
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

/// The complete-step request's fingerprint: a repeated identical completion is idempotent.
pub fn completion_digest(req: &CompleteRequest) -> String {
    use sha2::{Digest, Sha256};
    let bytes = serde_json::to_vec(req).unwrap_or_default();
    hex::encode(Sha256::digest(bytes))
}
