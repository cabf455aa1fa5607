//! Executes one leased step: prepares the workspace, runs the agent or the verify commands in
//! their own process group (killed on cancel, at once on a lost lease, stopped while the lease
//! clock has run out), streams the output, makes the git checkpoint of a git run, uploads the
//! artifacts and completes — or, when the lease was lost, discards everything; when the worker
//! is draining, hands the lease back. Called by the runner's claim loop (`runner.rs`), one step
//! at a time per slot.

use super::phases::{self, Produced};
use super::plane_retry::{backoff, retry_transient};
use super::state::{Active, Shared};
use super::streamer::Streamer;
use super::workdir;
use crate::api::{ArtifactRef, Assignment, CompleteRequest};
use crate::control_plane::PlaneError;
use crate::domain::api_limit::ApiFailure;
use crate::domain::{StepOutcome, StepPhase};
use backon::Retryable;
use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Runs one assignment to its end (complete, discard or hand back); returns the next step
/// when its completion claimed one.
pub async fn execute(shared: &Shared, a: Assignment) -> Option<Assignment> {
    let active = shared.register(&a.step_id, &a.run_id, a.epoch);
    let span = tracing::info_span!("step", run_id = %a.run_id, step_id = %a.step_id,
        worker_id = %shared.plane.worker_id(), lease_epoch = a.epoch, phase = %a.phase);
    let next = async {
        tracing::info!("step started");
        let started = Instant::now();
        let (req, pressure) = run(shared, &a, &active).await;
        let next = match pressure {
            Some(p) if !active.lost.load(Ordering::Acquire) => {
                hand_back(shared, &a, p).await;
                None
            }
            _ => finish(shared, &a, &active, req, started).await,
        };
        workdir::remove_step_dir(&shared.cfg.work_dir, &a.step_id).await;
        next
    }
    .instrument(span)
    .await;
    shared.unregister(&a.step_id, a.epoch);
    next
}

/// The agent API pushed back: the step goes back to the queue for a while, no attempt used.
async fn hand_back(shared: &Shared, a: &Assignment, (api, pause): (ApiFailure, u64)) {
    let reason = format!(
        "agent API {}: retry in {} s",
        api.as_str(),
        pause.div_ceil(1000)
    );
    match shared
        .plane
        .release(&a.step_id, a.epoch, &reason, Some(pause))
        .await
    {
        Ok(()) => tracing::warn!(%reason, "step handed back"),
        Err(e) => tracing::warn!(error = %e, "cannot hand the step back; its lease will expire"),
    }
}

/// Prepares, runs and uploads; returns the completion to send, and the API's push-back when
/// the step is to be handed back instead.
async fn run(
    shared: &Shared,
    a: &Assignment,
    active: &Arc<Active>,
) -> (CompleteRequest, Option<(ApiFailure, u64)>) {
    let dir = shared.cfg.work_dir.join("steps").join(&a.step_id);
    let log_name = format!("iter-{:02}-{}.log", a.attempt, a.phase.slug());
    let log = dir.join(&log_name);
    // A fresh directory, and the step's log always exists (and becomes an artifact), even
    // when nothing is printed.
    let made = fresh_dir(&dir).await.and_then(|()| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map(drop)
    });
    if let Err(e) = made {
        let reason = format!("cannot create {}: {e}", dir.display());
        return (
            completion(a, Produced::failed(reason, true), vec![], None),
            None,
        );
    }
    let streamer = Streamer::start(
        shared.plane.clone(),
        active.clone(),
        &a.step_id,
        a.epoch,
        log.clone(),
        a.output_offset,
    );
    let (mut produced, checkpoint) = work(shared, a, active, &dir, &log).await;
    let pressure = produced.pressure.take();
    streamer.finish(Duration::from_secs(30)).await;
    if active.is_abandoned() {
        return (completion(a, produced, vec![], None), pressure);
    }
    let req = upload_all(shared, a, active, produced, checkpoint, (log_name, log)).await;
    (req, pressure)
}

/// An empty directory for the step's files: a step claimed again on this worker (after its
/// lease was lost) must not send the abandoned attempt's output again.
async fn fresh_dir(dir: &Path) -> std::io::Result<()> {
    let d = dir.to_path_buf();
    let made = tokio::task::spawn_blocking(move || {
        match std::fs::remove_dir_all(&d) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::create_dir_all(&d)
    })
    .await;
    made.map_err(std::io::Error::other)?
}

/// Prepares the workspace, runs the phase, and makes the git checkpoint of what it did.
async fn work(
    shared: &Shared,
    a: &Assignment,
    active: &Active,
    dir: &Path,
    log: &Path,
) -> (Produced, Option<workdir::CheckpointFile>) {
    let ws = match workdir::prepare(shared, a, active).await {
        Ok(ws) => ws,
        Err(e) => return (Produced::failed(e.reason, e.infra), None),
    };
    let produced = match a.phase {
        StepPhase::Verification => phases::verify(shared, a, active, &ws, dir, log).await,
        _ => phases::agent(shared, a, active, &ws, dir, log).await,
    };
    // A postmortem looks at the run's work and changes nothing of it: no checkpoint.
    if active.is_abandoned() || a.phase == StepPhase::Postmortem {
        return (produced, None);
    }
    match workdir::checkpoint(shared, a, &ws).await {
        Ok(cp) => (produced, cp),
        // The step's work would be lost silently: fail it instead.
        Err(e) if produced.ok => {
            let reason = format!("cannot make the git checkpoint: {e}");
            (Produced::failed(reason, true), None)
        }
        Err(_) => (produced, None),
    }
}

/// Uploads the log, the phase's files and the checkpoint bundle; an upload that fails for
/// good fails the step (and drops the checkpoint).
async fn upload_all(
    shared: &Shared,
    a: &Assignment,
    active: &Active,
    mut produced: Produced,
    checkpoint: Option<workdir::CheckpointFile>,
    log: (String, PathBuf),
) -> CompleteRequest {
    let mut files = vec![log];
    files.append(&mut produced.files);
    let (mut refs, mut checkpoint_ref) = (Vec::new(), None);
    if let Some(cp) = &checkpoint {
        files.push((cp.name.clone(), cp.path.clone()));
        checkpoint_ref = Some(crate::api::Checkpoint {
            kind: "git_bundle".into(),
            name: cp.name.clone(),
            head: cp.head.clone(),
        });
    }
    for (name, path) in files {
        match upload(shared, a, active, &name, &path).await {
            Ok(Some(r)) => refs.push(r),
            Ok(None) => {}
            Err(e) => {
                // A step that already failed for the infrastructure keeps that first reason.
                if !produced.infra || produced.ok {
                    produced =
                        Produced::failed(format!("artifact upload failed: {name}: {e}"), true);
                }
                checkpoint_ref = None;
                break;
            }
        }
    }
    completion(a, produced, refs, checkpoint_ref)
}

fn completion(
    a: &Assignment,
    p: Produced,
    artifacts: Vec<ArtifactRef>,
    checkpoint: Option<crate::api::Checkpoint>,
) -> CompleteRequest {
    CompleteRequest {
        epoch: a.epoch,
        status: if p.ok {
            StepOutcome::Succeeded
        } else {
            StepOutcome::Failed
        },
        exit_code: p.exit_code,
        output_tail: p.tail,
        artifacts,
        checkpoint,
        completion_detected: p.completion_detected,
        failure_reason: p.failure,
        runner_notes: p.runner_notes,
        duration_ms: 0,
        infra_failure: p.infra,
        usage: p.usage,
        claim_next: false,
    }
}

/// Uploads one file (skipping a missing one): straight to the store, or through the
/// controller, which retries against its store; retries here only cover an unreachable
/// controller.
async fn upload(
    shared: &Shared,
    a: &Assignment,
    active: &Active,
    name: &str,
    path: &Path,
) -> Result<Option<ArtifactRef>, String> {
    let p = path.to_path_buf();
    let bytes = match tokio::task::spawn_blocking(move || std::fs::read(p)).await {
        Ok(Ok(b)) => Bytes::from(b),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Ok(Err(e)) => return Err(e.to_string()),
        Err(e) => return Err(e.to_string()),
    };
    if let Some(store) = &shared.cfg.direct_store {
        let key = crate::artifacts::attempt_key(&a.run_id, &a.step_id, a.epoch, name)
            .map_err(|e| e.to_string())?;
        let s = store
            .put_key(&key, bytes)
            .await
            .map_err(|e| e.to_string())?;
        return Ok(Some(ArtifactRef {
            name: name.into(),
            size: s.size,
            sha256: s.sha256,
        }));
    }
    let put = || {
        shared
            .plane
            .put_artifact(&a.step_id, a.epoch, name, bytes.clone())
    };
    match retry_transient(active, name, put).await {
        // Recorded by the controller already: not repeated in the completion.
        Ok(_) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Sends the completion (retrying while the controller is away), or discards, or hands back.
/// A worker that takes new steps asks for its next one with the completion; returns it.
async fn finish(
    shared: &Shared,
    a: &Assignment,
    active: &Active,
    mut req: CompleteRequest,
    started: Instant,
) -> Option<Assignment> {
    req.duration_ms = started.elapsed().as_millis() as u64;
    if active.handed_back.load(Ordering::Acquire) && !active.lost.load(Ordering::Acquire) {
        match shared
            .plane
            .release(&a.step_id, a.epoch, "worker stopping", None)
            .await
        {
            Ok(()) => tracing::info!("lease handed back"),
            Err(e) => tracing::warn!(error = %e, "cannot hand the lease back; it will expire"),
        }
        return None;
    }
    active.completing.store(true, Ordering::Release);
    // A lease lost meanwhile ends the retries before the next attempt.
    let attempt = || {
        let mut req = req.clone();
        req.claim_next = shared.claims_wanted();
        async move {
            if active.lost.load(Ordering::Acquire) {
                return Err(Sent::Lost);
            }
            shared
                .plane
                .complete(&a.step_id, req)
                .await
                .map_err(Sent::Refused)
        }
    };
    let sent = attempt
        .retry(backoff(Duration::from_millis(250), Duration::from_secs(10)))
        .sleep(tokio::time::sleep)
        .when(|e| matches!(e, Sent::Refused(e) if e.is_transient()))
        .notify(|e, _| tracing::warn!(error = %e, "cannot complete; retrying"))
        .await;
    match sent {
        Ok(next) => {
            tracing::info!(status = %req.status, "step completed");
            next
        }
        Err(Sent::Lost) => {
            tracing::warn!("lease lost: results discarded");
            None
        }
        Err(Sent::Refused(PlaneError::Stale | PlaneError::Gone(_) | PlaneError::NotFound(_))) => {
            tracing::warn!("completion refused: the lease is no longer ours; results discarded");
            None
        }
        Err(Sent::Refused(e)) => {
            tracing::error!(error = %e, "completion rejected");
            None
        }
    }
}

/// Why a completion was not sent.
#[derive(Debug, thiserror::Error)]
enum Sent {
    #[error("lease lost")]
    Lost,
    #[error(transparent)]
    Refused(PlaneError),
}
