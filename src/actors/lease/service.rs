//! What the LeaseActor does, all of it here, as async methods over the database: claims (long
//! polls answered as soon as a matching step is queued), renewals on heartbeats (and leases
//! a worker's heartbeats leave out, taken back), completions (deciding what follows in the
//! completion's own transaction or statement), and leases taken back — handed back, lost with
//! a worker, or expired. Holders' other writes are [`StepWrites`]; the transactions' bodies
//! are in `completion.rs`, `complete_pg.rs` and `returns.rs`; its state (waiters, grants,
//! claim snapshots) has its own files. Only the actor (`actor.rs`) calls it; `app` builds it.

use super::accounts::AccountLimits;
use super::assignment;
use super::authorize::authorize;
use super::complete_pg;
use super::completion::{completion_digest, record_in_tx};
use super::error::LeaseError;
use super::kept::{snapshot_size, Kept};
use super::returns::{log_released, record_requeued, Swept};
use super::unreported::Grants;
use super::waiters::WaitQueue;
use super::writes::StepWrites;
use crate::actors::events::EventHub;
use crate::actors::peers::{Notice, Peers};
use crate::actors::run_progress::outcome::FollowUp;
use crate::actors::ticks::PauseClock;
use crate::api::{Assignment, CompleteRequest, HeldLease, LeaseVerdict, WorkspaceSpec};
use crate::artifacts::run_logs::RunLogs;
use crate::artifacts::ArtifactStore;
use crate::db::fast::Claimed;
use crate::db::leases::{self, ClaimSpec, Requeued};
use crate::db::{self, Db, DbError};
use crate::domain::api_limit::ApiFailure;
use crate::domain::events as ev;
use crate::domain::time::rfc3339;
use crate::domain::{LeaseAction, RunStatus};
use crate::metrics::Metrics;
use crate::output_store::OutputStore;
use crate::settings::{ApiLimitSettings, LeaseSettings, SchedulerSettings};
use crate::workspace::mirror::Mirrors;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Who the service tells about finished steps (the scheduler).
pub type FollowUpSink = Arc<dyn Fn(FollowUp) + Send + Sync>;

/// The lease logic and everything it needs.
pub struct LeaseService {
    db: Db,
    hub: EventHub,
    metrics: Arc<Metrics>,
    output: OutputStore,
    store: ArtifactStore,
    lease: LeaseSettings,
    sched: SchedulerSettings,
    waiters: Arc<WaitQueue>,
    follow_up: FollowUpSink,
    /// Repository mirrors, for the prompts of the steps a completion queues.
    mirrors: Arc<Mirrors>,
    /// Postgres: what each step's completion will likely decide from, as its claim read it
    /// (see `kept.rs`); taken by the completion.
    claimed: std::sync::Mutex<Kept<db::fast::Snapshot>>,
    /// Since the last sweep that went through (see `LeaseService::sweep`).
    swept: Arc<PauseClock>,
    /// Grants not yet completed, for heartbeats to check (see `unreported.rs`).
    grants: Grants,
    /// The holders' writes besides the completion.
    writes: StepWrites,
    /// The other controllers: told of queued steps, and who runs the sweep.
    peers: Arc<Peers>,
    /// This controller is stopping: claims are answered at once, so that their workers go
    /// to another controller.
    stopping: std::sync::atomic::AtomicBool,
    /// The agent accounts' limits (see `accounts.rs`).
    accounts: Arc<AccountLimits>,
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
    /// The other controllers on the database.
    pub peers: Arc<Peers>,
    /// `[api_limits]`.
    pub api_limits: ApiLimitSettings,
    /// Where copies of the files steps upload go (a single host; else disabled).
    pub run_logs: RunLogs,
}

/// What one claim attempt found.
enum Attempt {
    Got(Box<Assignment>),
    /// Nothing this worker may take right now.
    Empty,
    /// The worker takes nothing new: it is draining or revoked.
    Closed,
}

impl LeaseService {
    pub fn new(p: LeaseServiceParts) -> Self {
        LeaseService {
            writes: StepWrites::new(
                p.db.clone(),
                p.hub.clone(),
                p.output.clone(),
                p.store.clone(),
                p.run_logs.clone(),
            ),
            db: p.db,
            hub: p.hub,
            metrics: p.metrics,
            output: p.output,
            store: p.store,
            lease: p.lease,
            sched: p.sched,
            waiters: Arc::default(),
            follow_up: p.follow_up,
            mirrors: p.mirrors,
            claimed: std::sync::Mutex::new(Kept::new(CLAIMED_CAP, CLAIMED_BYTES)),
            swept: Arc::new(PauseClock::new()),
            grants: Default::default(),
            peers: p.peers,
            stopping: Default::default(),
            accounts: Arc::new(AccountLimits::new(p.api_limits)),
        }
    }

    /// Whether this controller runs the lease sweep now (see `actors::peers`).
    pub fn holds_duties(&self) -> bool {
        self.peers.holds_duties()
    }

    /// This controller is stopping: every claim waiting here, and every claim from now on, is
    /// answered with [`LeaseError::Stopping`] (a 503 that sends its worker to another
    /// controller).
    pub fn stop_claims(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Release);
        self.waiters.wake_all();
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Acquire)
    }

    /// How often expired leases are swept.
    pub fn sweep_interval(&self) -> Duration {
        Duration::from_millis(self.lease.sweep_interval_ms)
    }

    /// The sweeps begin: the first one's pause is measured from now.
    pub fn sweeps_begin(&self) {
        self.swept.reset();
    }

    /// The holders' writes: output, events, artifacts.
    pub fn writes(&self) -> &StepWrites {
        &self.writes
    }

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
            if self.is_stopping() {
                return Err(LeaseError::Stopping);
            }
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
    async fn try_claim(&self, worker_id: &str, labels: &[String]) -> Result<Attempt, LeaseError> {
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
                let offset = output_held(&output, c, &got)?;
                Ok((got, offset))
            })
            .await?;
        self.granted(worker_id, got, offset)
    }

    /// A claim's lease time and affinity window, in milliseconds.
    fn claim_times(&self) -> (i64, i64) {
        (
            self.lease.ttl_ms as i64,
            self.sched.affinity_window_ms as i64,
        )
    }

    /// What a claim found, as the worker gets it: the snapshot its completion will decide from
    /// is kept, the dispatch time measured, the run's watchers told.
    fn granted(
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
        let mut a = assignment::build(&g.run, &g.state, &g.step, &g.lease, offset)
            .map_err(LeaseError::Internal)?;
        self.hand_credential(&mut a);
        Ok(Attempt::Got(Box::new(a)))
    }

    /// With `git.worker_credentials = "from_controller"`, puts the controller's https
    /// credential for the run's git host into the assignment (read from its file or variable
    /// now, so a rotated token is handed on). A credential that cannot be read is left out:
    /// the worker then tries its own, and a failure says so.
    fn hand_credential(&self, a: &mut Assignment) {
        let remotes = self.mirrors.remotes();
        if !remotes.hand_credentials() {
            return;
        }
        let WorkspaceSpec::Git {
            repo_url,
            credential,
            ..
        } = &mut a.workspace
        else {
            return;
        };
        let handed = crate::workspace::remote::parse(repo_url)
            .and_then(|url| remotes.handed_credential(&url));
        match handed {
            Ok(c) => *credential = c,
            Err(e) => {
                tracing::warn!(step_id = %a.step_id, error = %e, "no credential handed to the worker")
            }
        }
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
                .release(worker_id, &step_id, epoch, "not held by its worker", None)
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
                                    .is_some_and(|r| r.run_status() == Some(RunStatus::Canceled)),
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

    /// A step was queued or became claimable: wake one claimer that may take it, here and on
    /// the other controllers.
    pub fn queue_changed(self: &Arc<Self>, required_labels: &str, preferred: Option<&str>) {
        self.peers.publish(Notice::Queued {
            labels: required_labels.to_string(),
            preferred: preferred.map(str::to_string),
        });
        self.queue_changed_here(required_labels, preferred);
    }

    /// [`queue_changed`](Self::queue_changed) for the claimers of this controller only (the
    /// notice of another controller).
    pub fn queue_changed_here(self: &Arc<Self>, required_labels: &str, preferred: Option<&str>) {
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

    /// A step ended while an agent account held claims at its limit: its slot may be free.
    /// One claimer here and one on each other controller look (the claim checks the limit);
    /// without this, held claims would wait for the next look at the accounts (a second).
    fn slot_may_be_free(&self) {
        if !self.accounts.holding() {
            return;
        }
        self.peers.publish(Notice::Queued {
            labels: String::new(),
            preferred: None,
        });
        self.waiters.wake("", None);
    }

    /// Many steps may have become claimable (a resumed run): wake every waiter, here and on
    /// the other controllers.
    pub fn wake_all(&self) {
        self.peers.publish(Notice::WakeAll);
        self.waiters.wake_all();
    }

    /// Wakes every waiter of this controller (the notice of another controller).
    pub fn wake_all_here(&self) {
        self.waiters.wake_all();
    }

    /// Completes a step. A repeat of the same completion is accepted and changes nothing.
    /// With `claim_next`, also claims the worker's next step (one its `labels` allow) at once,
    /// without waiting: usually in the completion's own statement.
    pub async fn complete(
        &self,
        worker_id: &str,
        step_id: &str,
        req: CompleteRequest,
        labels: &[String],
    ) -> Result<Option<Assignment>, LeaseError> {
        let next = req.claim_next.then_some(labels);
        let claimed = self
            .record_completion(worker_id, step_id, req, next)
            .await?;
        self.grants.forget(worker_id, step_id);
        self.accounts.completed(&self.db, &self.waiters, step_id);
        self.slot_may_be_free();
        let Some(labels) = next else {
            return Ok(None);
        };
        let attempt = match claimed {
            Some((got, offset)) => self.granted(worker_id, got, offset)?,
            None => self.try_claim(worker_id, labels).await?,
        };
        Ok(match attempt {
            Attempt::Got(a) => Some(*a),
            Attempt::Empty | Attempt::Closed => None,
        })
    }

    /// Records a completion, and returns the next claim when the completion's statement made it.
    async fn record_completion(
        &self,
        worker_id: &str,
        step_id: &str,
        req: CompleteRequest,
        next: Option<&[String]>,
    ) -> Result<Option<(Claimed, u64)>, LeaseError> {
        let digest = completion_digest(&req);
        let (wid, sid) = (worker_id.to_string(), step_id.to_string());
        let kind = self.store.kind().as_str().to_string();
        // Artifacts a worker stored itself are under its lease's own keys.
        for a in &req.artifacts {
            crate::artifacts::attempt_key("r", step_id, req.epoch, &a.name)
                .map_err(|e| LeaseError::Invalid(e.to_string()))?;
        }
        // On Postgres, usually one statement to read and one to write (see `complete_pg.rs`).
        // A completion that reports usage takes the transactional path, which records it (and
        // reads the run's budget) in the same transaction: agent steps are long, their
        // completions few.
        // With daily budgets, every completion's decision reads what the workspace spent today.
        if self.db.backend() == db::Backend::Postgres
            && req.artifacts.is_empty()
            && req.usage.is_none()
            && crate::settings::installed_budgets().is_none()
        {
            let kept = self
                .claimed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(step_id);
            let w = complete_pg::Writer::new(
                worker_id,
                step_id,
                &req,
                &digest,
                self.mirrors.clone(),
                next,
                self.claim_times(),
            );
            if let Some(done) = complete_pg::complete(&self.db, &self.output, kept, w).await? {
                self.hub.notify(&done.run_id);
                (self.follow_up)(FollowUp {
                    run_id: done.run_id,
                    decided: Some(done.actions),
                });
                return Ok(done.claimed);
            }
        }
        let mirrors = self.mirrors.clone();
        // One transaction records the completion and decides what follows it.
        let (first, spent) = self
            .db
            .tx(move |c| record_in_tx(c, &wid, &sid, &req, &digest, &kind, &mirrors))
            .await?;
        if let (Some(_), Some((model, usage))) = (&first, &spent) {
            self.metrics.count_usage(model, usage);
        }
        if let Some(f) = first {
            self.hub.notify(&f.run_id);
            (self.follow_up)(f);
        }
        Ok(None)
    }

    /// Hands a lease back (worker drain): the step is queued again, no retry used.
    pub async fn release(
        &self,
        worker_id: &str,
        step_id: &str,
        epoch: i64,
        reason: &str,
        pause_ms: Option<u64>,
    ) -> Result<(), LeaseError> {
        let pause = pause_ms.map(|p| p.min(i64::MAX as u64) as i64);
        let (wid, sid, why) = (
            worker_id.to_string(),
            step_id.to_string(),
            reason.to_string(),
        );
        // The agent API pushed back: recorded against the step's account in the same
        // transaction.
        let api = pause.and_then(|p| ApiFailure::from_reason(reason).map(|a| (a, p)));
        let accounts = self.accounts.clone();
        let r = self
            .db
            .tx(move |c| -> Result<_, LeaseError> {
                authorize(c, &sid, &wid, epoch)?;
                if let Some((api, p)) = api {
                    accounts.signal_in_tx(c, &sid, api, p)?;
                }
                let r = leases::release(c, &sid, &wid, epoch, pause)?;
                let now = c.now_ms()?;
                record_requeued(c, std::slice::from_ref(&r), ev::LEASE_RELEASED, &why, now)?;
                Ok(r)
            })
            .await;
        let r = r?;
        self.grants.forget(worker_id, step_id);
        self.metrics.lease_released.inc();
        log_released(std::slice::from_ref(&r), reason);
        self.after_requeue(&[r]);
        // Claims waiting meanwhile found nothing: wake them when the pause is over.
        if let Some(p) = pause_ms {
            let waiters = self.waiters.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(p)).await;
                waiters.wake_all();
            });
        }
        Ok(())
    }

    /// Looks at the agent accounts (every second, on every controller): wakes the claims a
    /// freed slot lets through.
    pub async fn look_at_accounts(&self) {
        self.accounts.look(&self.db, &self.waiters).await;
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
        self.metrics.lease_released.inc_by(list.len() as u64);
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
            self.metrics.lease_expired.inc_by(list.len() as u64);
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
                (self.follow_up)(FollowUp {
                    run_id: r.run_id.clone(),
                    decided: None,
                });
            } else {
                self.metrics.step_retry.inc();
                // Rare (a worker was lost): let every waiter look, whatever the step's labels.
                self.wake_all();
            }
        }
    }
}

/// How much output the controller holds for a claimed step: none at its first lease (output
/// is written under a lease), else a stat or a row (call it where blocking is fine).
fn output_held(
    output: &OutputStore,
    c: &mut db::Conn,
    got: &db::fast::Claimed,
) -> Result<u64, DbError> {
    match got {
        db::fast::Claimed::Got(g) if g.lease.epoch > 1 => {
            Ok(output.size(c, &g.run.id, &g.step.id)?)
        }
        _ => Ok(0),
    }
}
