//! The RunnerActor executes steps: one actor per slot claims with long polls and runs what it
//! gets (`runner_step.rs`); one heartbeat loop per process renews the leases and applies the
//! controller's word on them (`cancel`: kill the step; `stop`: kill it and discard its work).
//! The same code runs in the single role (local control plane) and on workers (HTTP).

use super::runner_step;
use crate::api::{Assignment, Capabilities, HeldLease, RegisterRequest};
use crate::artifacts::ArtifactStore;
use crate::control_plane::http::HttpPlane;
use crate::control_plane::{ControlPlane, PlaneError};
use crate::domain::{LeaseAction, WorkerStatus};
use crate::settings::Settings;
use actix::prelude::*;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How a worker process runs steps.
#[derive(Clone)]
pub struct RunnerConfig {
    pub work_dir: PathBuf,
    pub slots: u32,
    pub kill_grace: Duration,
    pub heartbeat_interval: Duration,
    /// Clones unused for longer are removed at start (None: kept).
    pub clone_keep: Option<Duration>,
    /// And again this often while the worker runs (None: only at start).
    pub clone_sweep_every: Option<Duration>,
    /// Environment variables passed to agents (`PREFIX_*` globs).
    pub agent_env: Vec<String>,
    /// Upload artifacts straight to this store instead of through the controller.
    pub direct_store: Option<ArtifactStore>,
}

/// A step this process is executing.
pub struct Active {
    pub run_id: String,
    pub epoch: i64,
    /// Fired to kill the step's process group.
    pub cancel: CancellationToken,
    /// The lease is gone: write nothing more.
    pub lost: AtomicBool,
    /// Drain: give the lease back instead of completing.
    pub handed_back: AtomicBool,
    /// The step's work is over and its completion is being sent (or was accepted, which
    /// drops the lease): the completion's answer, not a heartbeat, says whether it counted.
    pub completing: AtomicBool,
}

impl Active {
    /// The step's lease was lost or handed back: its results are not to be sent.
    pub fn is_abandoned(&self) -> bool {
        self.lost.load(Ordering::Acquire) || self.handed_back.load(Ordering::Acquire)
    }
}

/// State shared by the slots and the heartbeat loop.
pub struct Shared {
    pub plane: ControlPlane,
    pub cfg: RunnerConfig,
    /// Keyed by step id and epoch: an abandoned attempt may still be winding down when the
    /// same step is claimed again.
    active: Mutex<HashMap<(String, i64), Arc<Active>>>,
    pub draining: AtomicBool,
    /// Slots stop claiming when this fires.
    pub stop_claims: CancellationToken,
    /// Slots whose claim loop still runs (one may have a long poll in flight).
    claiming: AtomicUsize,
    /// Signalled whenever a step ends or a slot stops claiming.
    pub step_ended: Notify,
    /// A step prepares its clone under a read guard, a sweep of idle clones runs under the
    /// write guard (see `workdir::sweep_clones`).
    pub clones: tokio::sync::RwLock<()>,
}

impl Shared {
    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i64), Arc<Active>>> {
        match self.active.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    pub fn register(&self, step_id: &str, run_id: &str, epoch: i64) -> Arc<Active> {
        let a = Arc::new(Active {
            run_id: run_id.into(),
            epoch,
            cancel: CancellationToken::new(),
            lost: AtomicBool::new(false),
            handed_back: AtomicBool::new(false),
            completing: AtomicBool::new(false),
        });
        self.active()
            .insert((step_id.to_string(), epoch), a.clone());
        a
    }

    pub fn unregister(&self, step_id: &str, epoch: i64) {
        self.active().remove(&(step_id.to_string(), epoch));
        self.step_ended.notify_waiters();
    }

    fn snapshot(&self) -> Vec<(String, Arc<Active>)> {
        self.active()
            .iter()
            .map(|((id, _), v)| (id.clone(), v.clone()))
            .collect()
    }

    /// The runs this process is executing steps of.
    pub(super) fn active_runs(&self) -> HashSet<String> {
        self.active().values().map(|a| a.run_id.clone()).collect()
    }

    fn is_idle(&self) -> bool {
        self.active().is_empty()
    }

    /// Whether this worker takes new steps: not stopping, not draining.
    pub(super) fn claims_wanted(&self) -> bool {
        !self.stop_claims.is_cancelled() && !self.draining.load(Ordering::Acquire)
    }
}

/// One slot: claims and executes steps until told to stop.
pub struct RunnerActor {
    shared: Arc<Shared>,
    slot: u32,
}

impl Actor for RunnerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let shared = self.shared.clone();
        let slot = self.slot;
        ctx.spawn(claim_loop(shared, slot).into_actor(self));
    }
}

async fn claim_loop(shared: Arc<Shared>, slot: u32) {
    claim_until_stopped(&shared, slot).await;
    shared.claiming.fetch_sub(1, Ordering::AcqRel);
    shared.step_ended.notify_waiters();
}

async fn claim_until_stopped(shared: &Shared, slot: u32) {
    let mut backoff = Duration::from_millis(250);
    // A step leased to this slot by its last completion.
    let mut next: Option<Assignment> = None;
    // A draining worker claims nothing new; a long poll already in flight is let finish (its
    // step, if any, is handed straight back) so that no lease is granted to a dropped request.
    loop {
        let claimed = match next.take() {
            Some(a) => Ok(Some(a)),
            None if !shared.claims_wanted() => break,
            None => tokio::select! {
                r = shared.plane.claim(Duration::from_secs(10)) => r,
                _ = shared.stop_claims.cancelled() => break,
            },
        };
        match claimed {
            Ok(Some(a)) => {
                backoff = Duration::from_millis(250);
                if !shared.claims_wanted() {
                    // Claimed while a drain or a stop began: give it straight back.
                    let _ = shared
                        .plane
                        .release(&a.step_id, a.epoch, "worker draining")
                        .await;
                    continue;
                }
                next = runner_step::execute(shared, a).await;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(slot, error = %e, "claim failed; retrying");
                tokio::time::sleep(super::streamer::jitter(backoff)).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Renews leases on the heartbeat interval and applies cancel/stop verdicts.
async fn heartbeat_loop(shared: Arc<Shared>) {
    loop {
        let active = shared.snapshot();
        let leases = active
            .iter()
            .map(|(id, a)| HeldLease {
                step_id: id.clone(),
                epoch: a.epoch,
            })
            .collect();
        let status = if shared.draining.load(Ordering::Acquire) {
            WorkerStatus::Draining
        } else if active.is_empty() {
            WorkerStatus::Idle
        } else {
            WorkerStatus::Busy
        };
        let mut metrics = serde_json::Map::new();
        metrics.insert("running_steps".into(), active.len().into());
        match shared.plane.heartbeat(status, leases, metrics).await {
            Ok(verdicts) => {
                for v in verdicts {
                    let held =
                        |(id, a): &&(String, Arc<Active>)| *id == v.step_id && a.epoch == v.epoch;
                    let Some((_, a)) = active.iter().find(held) else {
                        continue;
                    };
                    match v.action {
                        LeaseAction::Continue => {}
                        LeaseAction::Cancel => {
                            tracing::info!(run_id = %a.run_id, step_id = %v.step_id, "run cancelled: killing the step");
                            a.cancel.cancel();
                        }
                        // A heartbeat racing the completion finds the lease gone because
                        // the completion was accepted: the step is done, not lost.
                        LeaseAction::Stop if a.completing.load(Ordering::Acquire) => {
                            tracing::debug!(step_id = %v.step_id, "lease ended with the step's completion");
                        }
                        LeaseAction::Stop => lose(&v.step_id, a),
                    }
                }
            }
            Err(PlaneError::Gone(why)) => {
                tracing::warn!(reason = %why, "the controller no longer knows this worker: abandoning steps and registering again");
                for (id, a) in &active {
                    lose(id, a);
                }
                if let ControlPlane::Http(p) = &shared.plane {
                    p.reregister().await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed; steps keep running"),
        }
        tokio::time::sleep(shared.cfg.heartbeat_interval).await;
    }
}

fn lose(step_id: &str, a: &Active) {
    tracing::warn!(run_id = %a.run_id, step_id, lease_epoch = a.epoch, "lease lost: killing the step and discarding its results");
    a.lost.store(true, Ordering::Release);
    a.cancel.cancel();
}

/// The runners of one process.
pub struct WorkerHandle {
    shared: Arc<Shared>,
    _runners: Vec<Addr<RunnerActor>>,
}

impl WorkerHandle {
    /// Starts the heartbeat loop and one RunnerActor per slot.
    pub fn start(plane: ControlPlane, cfg: RunnerConfig) -> WorkerHandle {
        runner_step::kill_leftovers(&cfg.work_dir);
        let cfg_slots = cfg.slots as usize;
        let shared = Arc::new(Shared {
            plane,
            cfg,
            active: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            stop_claims: CancellationToken::new(),
            claiming: AtomicUsize::new(cfg_slots),
            step_ended: Notify::new(),
            clones: tokio::sync::RwLock::new(()),
        });
        actix::spawn(heartbeat_loop(shared.clone()));
        actix::spawn(super::workdir::sweep_clones(shared.clone()));
        let runners = (0..shared.cfg.slots)
            .map(|slot| {
                RunnerActor {
                    shared: shared.clone(),
                    slot,
                }
                .start()
            })
            .collect();
        WorkerHandle {
            shared,
            _runners: runners,
        }
    }

    /// Stops claiming, lets running steps (and claims in flight) finish for up to `timeout`,
    /// then hands the rest back.
    pub async fn drain(&self, timeout: Duration) {
        self.shared.draining.store(true, Ordering::Release);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before the check, so an end in between is not missed.
            let ended = self.shared.step_ended.notified();
            if self.shared.is_idle() && self.shared.claiming.load(Ordering::Acquire) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                break;
            }
        }
        self.stop_now().await;
    }

    /// Kills running steps and hands their leases back, then waits for the slots to let go.
    pub async fn stop_now(&self) {
        self.shared.draining.store(true, Ordering::Release);
        self.shared.stop_claims.cancel();
        for (_, a) in self.shared.snapshot() {
            a.handed_back.store(true, Ordering::Release);
            a.cancel.cancel();
        }
        let limit = self.shared.cfg.kill_grace + Duration::from_secs(10);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let ended = self.shared.step_ended.notified();
            if self.shared.is_idle() {
                break;
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                tracing::warn!("steps did not stop in time");
                break;
            }
        }
    }
}

/// Registers with the controller, retrying with backoff until it answers.
pub async fn register_with_retry(settings: &Settings) -> HttpPlane {
    let base = settings.worker.controller.clone().unwrap_or_default();
    let token = settings
        .worker
        .join_token
        .as_ref()
        .map(|t| t.expose().to_string())
        .unwrap_or_default();
    let req = RegisterRequest {
        hostname: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().to_string())
            .unwrap_or_else(|_| "worker".into()),
        capabilities: Capabilities {
            labels: settings.worker.labels.clone(),
            slots: settings.worker.slots.max(1),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        instance_id: Some(uuid::Uuid::new_v4().to_string()),
    };
    let mut backoff = Duration::from_millis(250);
    loop {
        match HttpPlane::register(&base, &token, req.clone()).await {
            Ok(p) => {
                tracing::info!(worker_id = %p.worker_id(), controller = %base, "registered with the controller");
                return p;
            }
            Err(e) => {
                tracing::warn!(controller = %base, error = %e, "cannot register; retrying");
                tokio::time::sleep(super::streamer::jitter(backoff)).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
