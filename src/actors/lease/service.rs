//! What the LeaseActor does, as async methods over the database: claim (with long polling),
//! renew, and the epoch check in front of every worker write (the writes are in
//! `lease_writes.rs`, leases taken back in `lease_returns.rs`). The actor in `lease.rs` owns
//! one `LeaseService` and forwards its messages here.

use super::assignment;
use super::completion::{snapshot_size, Kept};
use super::events::EventHub;
use super::scheduler_service::Advanced;
use super::waiters::WaitQueue;
use crate::api::{Assignment, CompleteRequest, HeldLease, LeaseVerdict};
use crate::artifacts::ArtifactStore;
use crate::db::leases::{self, ClaimSpec};
use crate::db::models::{LeaseRow, StepRow};
use crate::db::{self, Db, DbError};
use crate::domain::time::rfc3339;
use crate::domain::LeaseAction;
use crate::metrics::Metrics;
use crate::output_store::OutputStore;
use crate::settings::{LeaseSettings, SchedulerSettings};
use crate::workspace::mirror::Mirrors;
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

/// A run whose step finished (or was given up), for the scheduler: what was already decided
/// in the step's own transaction, to carry out, or `None`: decide now.
pub struct FollowUp {
    pub run_id: String,
    pub decided: Option<Vec<Advanced>>,
}

/// Who the service tells about finished steps (the scheduler).
pub type FollowUpSink = Arc<dyn Fn(FollowUp) + Send + Sync>;

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
    pub follow_up: FollowUpSink,
    /// Repository mirrors, for the prompts of the steps a completion queues.
    pub mirrors: Arc<Mirrors>,
    /// Postgres: what each step's completion will likely decide from, as its claim read it
    /// (see `completion.rs`); taken by the completion.
    pub(super) claimed: std::sync::Mutex<Kept<db::fast::Snapshot>>,
    /// Since the last sweep that went through (see `LeaseService::sweep`).
    pub(super) swept: Arc<super::PauseClock>,
    /// Grants not yet completed, for heartbeats to check (see `unreported.rs`).
    pub(super) grants: super::unreported::Grants,
}

/// Most claim snapshots kept, and their bytes (a step whose completion never comes leaves one
/// behind until its step is claimed again).
const CLAIMED_CAP: usize = 16_384;
const CLAIMED_BYTES: usize = 32 << 20;

/// What a LeaseService is built from.
pub struct LeaseServiceParts {
    pub db: Db,
    pub hub: EventHub,
    pub metrics: Arc<Metrics>,
    pub output: OutputStore,
    pub store: ArtifactStore,
    pub lease: LeaseSettings,
    pub sched: SchedulerSettings,
    pub follow_up: FollowUpSink,
    /// Repository mirrors, for the prompts of the steps a completion queues.
    pub mirrors: Arc<Mirrors>,
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
            follow_up: p.follow_up,
            mirrors: p.mirrors,
            claimed: std::sync::Mutex::new(Kept::new(CLAIMED_CAP, CLAIMED_BYTES)),
            swept: Arc::new(super::PauseClock::new()),
            grants: Default::default(),
        }
    }
}

/// The lease a write carries must be the step's live lease, held by `worker_id`. Another
/// worker's live lease at the same epoch is `Forbidden`; anything else is `Stale`. Call it in
/// the write's transaction: the lease row stays locked until the write commits (see
/// [`leases::check`]), and the step is read under the same lock, so it is current.
pub fn authorize(
    c: &mut db::Conn,
    step_id: &str,
    worker_id: &str,
    epoch: i64,
) -> Result<(StepRow, LeaseRow), LeaseError> {
    authorize_held(c, step_id, worker_id, epoch).map(|h| (h.step, h.lease))
}

/// [`authorize`], with the database time of the check.
pub fn authorize_held(
    c: &mut db::Conn,
    step_id: &str,
    worker_id: &str,
    epoch: i64,
) -> Result<leases::Held, LeaseError> {
    match leases::check_held(c, step_id, worker_id, epoch) {
        Ok(h) => Ok(h),
        Err(DbError::StaleLease) => {
            db::steps::get(c, step_id)?.ok_or(LeaseError::NotFound)?;
            match leases::get(c, step_id)? {
                Some(l) if l.worker_id != worker_id && l.epoch == epoch => {
                    Err(LeaseError::Forbidden)
                }
                _ => Err(LeaseError::Stale),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// What one claim attempt found.
pub(super) enum Attempt {
    Got(Box<Assignment>),
    /// Nothing this worker may take right now.
    Empty,
    /// The worker takes nothing new: it is draining or revoked.
    Closed,
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
            let (got, closed) = match self.try_claim(worker_id, labels).await {
                Ok(Attempt::Empty) => (None, false),
                Ok(Attempt::Got(a)) => (Some(Ok(Some(*a))), false),
                // Draining or gone: answer at once.
                Ok(Attempt::Closed) => (Some(Ok(None)), true),
                Err(e) => (Some(Err(e)), false),
            };
            if let Some(got) = got {
                self.waiters.remove(ticket.id);
                // A closed worker may have used up a wake-up meant for a step: pass it on.
                if ticket.woken.try_recv().is_ok() || closed {
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
    /// A draining (or revoked) worker takes nothing new, even from a long poll that began
    /// before it said so (the claim itself checks). An offline one is refused at
    /// authentication; the in-process worker of the single role keeps claiming even if it was
    /// once marked offline (after a suspend), as it never registers again.
    pub(super) async fn try_claim(
        &self,
        worker_id: &str,
        labels: &[String],
    ) -> Result<Attempt, LeaseError> {
        let (wid, lbl) = (worker_id.to_string(), labels.to_vec());
        let (ttl, window) = self.claim_times();
        let output = self.output.clone();
        let (got, offset) = self
            .db
            .run(move |c| -> Result<_, DbError> {
                let spec = ClaimSpec {
                    worker_id: &wid,
                    labels: &lbl,
                    ttl_ms: ttl,
                    affinity_window_ms: window,
                };
                let got = db::fast::claim(c, &spec)?;
                let offset = output_held(&output, &got);
                Ok((got, offset))
            })
            .await?;
        self.granted(worker_id, got, offset)
    }

    /// A claim's lease time and affinity window, in milliseconds.
    pub(super) fn claim_times(&self) -> (i64, i64) {
        (
            self.lease.ttl_ms as i64,
            self.sched.affinity_window_ms as i64,
        )
    }

    /// What a claim found, as the worker gets it: the snapshot its completion will decide from
    /// is kept, the dispatch time measured, the run's watchers told.
    pub(super) fn granted(
        &self,
        worker_id: &str,
        got: db::fast::Claimed,
        offset: u64,
    ) -> Result<Attempt, LeaseError> {
        let mut g = match got {
            db::fast::Claimed::Closed => return Ok(Attempt::Closed),
            db::fast::Claimed::Empty => return Ok(Attempt::Empty),
            db::fast::Claimed::Got(g) => g,
        };
        if let Some(next) = g.next.take() {
            let size = snapshot_size(&next);
            let mut kept = self.claimed.lock().unwrap_or_else(|e| e.into_inner());
            kept.keep(&g.step.id, next, size);
        }
        self.metrics
            .step_dispatch
            .observe((g.now - g.step.queued_at).max(0) as f64 / 1000.0);
        tracing::info!(run_id = %g.run.id, step_id = %g.step.id, worker_id = %worker_id, lease_epoch = g.lease.epoch, phase = %g.step.phase, "lease granted");
        self.grants.note(worker_id, &g.step.id, g.lease.epoch);
        self.hub.notify(&g.run.id);
        assignment::build(&g.run, &g.state, &g.step, &g.lease, offset)
            .map(|a| Attempt::Got(Box::new(a)))
            .map_err(LeaseError::Internal)
    }

    /// Renews the leases a worker reports and says what to do with each; takes back those it
    /// was granted long enough ago and does not report (see `unreported.rs`).
    pub async fn renew(
        &self,
        worker_id: &str,
        held: Vec<HeldLease>,
    ) -> Result<Vec<LeaseVerdict>, LeaseError> {
        let grace = Duration::from_millis(self.lease.worker_offline_after_ms);
        for (step_id, epoch) in self.grants.unreported(worker_id, &held, grace) {
            match self
                .release(worker_id, &step_id, epoch, "not held by its worker")
                .await
            {
                // Already ended (completed, expired, cancelled): nothing to take back.
                Ok(()) | Err(LeaseError::Stale | LeaseError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        if held.is_empty() {
            return Ok(Vec::new());
        }
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

/// How much output the controller holds for a claimed step (a stat: call it where blocking is
/// fine).
pub(super) fn output_held(output: &OutputStore, got: &db::fast::Claimed) -> u64 {
    match got {
        db::fast::Claimed::Got(g) => output.size(&g.run.id, &g.step.id),
        _ => 0,
    }
}

/// The complete-step request's fingerprint: a repeated identical completion is idempotent.
/// `claim_next` asks for something besides the completion and is not part of it.
pub fn completion_digest(req: &CompleteRequest) -> String {
    use sha2::{Digest, Sha256};
    let completion = CompleteRequest {
        claim_next: false,
        ..req.clone()
    };
    let bytes = serde_json::to_vec(&completion).unwrap_or_default();
    hex::encode(Sha256::digest(bytes))
}
