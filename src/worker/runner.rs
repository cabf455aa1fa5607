//! The RunnerActor executes steps: one actor per slot claims with long polls and runs what it
//! gets (`step.rs`); one heartbeat loop per process renews the leases and applies the
//! controller's word on them (`cancel`: kill the step; `stop`: kill it at once and discard its
//! work); on a worker, a lease clock stops the step's processes while its lease may have run
//! out unrenewed.
//! The same code runs in the single role (local control plane) and on workers (HTTP).
//! [`WorkerHandle`] is the wing's front door: `app` starts, drains and stops the runners
//! through it.

use super::leftovers::kill_leftovers;
use super::plane_retry::backoff;
use super::state::{Active, RunnerConfig, Shared};
use super::{step, workdir};
use crate::api::{Assignment, HeldLease};
use crate::control_plane::{ControlPlane, PlaneError};
use crate::domain::{LeaseAction, WorkerStatus};
use actix::prelude::*;
use backon::Retryable;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    shared.claim_loop_ended();
}

async fn claim_until_stopped(shared: &Shared, slot: u32) {
    // A step leased to this slot by its last completion.
    let mut next: Option<Assignment> = None;
    // A draining worker claims nothing new; a long poll already in flight is let finish (its
    // step, if any, is handed straight back) so that no lease is granted to a dropped request.
    loop {
        let claimed = match next.take() {
            Some(a) => Ok(Some(a)),
            None if !shared.claims_wanted() => break,
            None => {
                // Failed claims are retried with backoff while claims are wanted.
                let claim = || shared.plane.claim(Duration::from_secs(10));
                let retried = claim
                    .retry(backoff(Duration::from_millis(250), Duration::from_secs(10)))
                    .sleep(tokio::time::sleep)
                    .when(|_| shared.claims_wanted())
                    .notify(|e, _| tracing::warn!(slot, error = %e, "claim failed; retrying"));
                tokio::select! {
                    r = retried => r,
                    _ = shared.stop_claims.cancelled() => break,
                }
            }
        };
        // Nothing claimed, or a failed claim after claims stopped being wanted: the loop's top
        // decides.
        let Ok(Some(a)) = claimed else {
            continue;
        };
        if !shared.claims_wanted() {
            // Claimed while a drain or a stop began: give it straight back.
            let _ = shared
                .plane
                .release(&a.step_id, a.epoch, "worker draining", None)
                .await;
            continue;
        }
        next = step::execute(shared, a).await;
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
        // A renewal counts from the sending: the controller renewed the lease after it.
        let sent = Instant::now();
        match shared.plane.heartbeat(status, leases, metrics).await {
            Ok(verdicts) => {
                for v in verdicts {
                    let held =
                        |(id, a): &&(String, Arc<Active>)| *id == v.step_id && a.epoch == v.epoch;
                    let Some((_, a)) = active.iter().find(held) else {
                        continue;
                    };
                    match v.action {
                        LeaseAction::Continue => a.renewed(sent),
                        LeaseAction::Cancel => {
                            a.renewed(sent);
                            tracing::info!(run_id = %a.run_id, step_id = %v.step_id, "run cancelled: killing the step");
                            a.cancel.cancel();
                        }
                        // A heartbeat racing the completion finds the lease gone because
                        // the completion was accepted: the step is done, not lost.
                        LeaseAction::Stop if a.completing.load(Ordering::Acquire) => {
                            tracing::debug!(step_id = %v.step_id, "lease ended with the step's completion");
                        }
                        LeaseAction::Stop => a.lose("the controller says the lease is gone"),
                    }
                }
            }
            Err(PlaneError::Gone(why)) => {
                tracing::warn!(reason = %why, "the controller no longer knows this worker: abandoning steps and registering again");
                for (_, a) in &active {
                    a.lose("the controller no longer knows this worker");
                }
                shared.plane.rejoin().await;
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed; steps keep running"),
        }
        tokio::time::sleep(shared.cfg.heartbeat_interval).await;
    }
}

/// The worker's own lease clock: a step whose lease was not renewed for `period` (the
/// controller unreachable, or this process frozen) is stopped until the controller answers.
/// Ticks often, so that a worker thawed from a SIGSTOP stops its steps before anything else.
async fn lease_clock(shared: Arc<Shared>, period: Duration) {
    let tick = (period / 20).clamp(Duration::from_millis(20), Duration::from_millis(250));
    loop {
        for (_, a) in shared.snapshot() {
            a.check_clock(period);
        }
        tokio::time::sleep(tick).await;
    }
}

/// The runners of one process.
pub struct WorkerHandle {
    shared: Arc<Shared>,
    _runners: Vec<Addr<RunnerActor>>,
}

impl WorkerHandle {
    /// Starts the heartbeat loop and one RunnerActor per slot.
    pub fn start(plane: Arc<dyn ControlPlane>, cfg: RunnerConfig) -> WorkerHandle {
        kill_leftovers(&cfg.work_dir);
        let shared = Arc::new(Shared::new(plane, cfg));
        actix::spawn(heartbeat_loop(shared.clone()));
        if let Some(period) = shared.cfg.lease_clock {
            actix::spawn(lease_clock(shared.clone(), period));
        }
        actix::spawn(workdir::sweep_clones(shared.clone()));
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
            if self.shared.is_idle() && self.shared.claiming() == 0 {
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
