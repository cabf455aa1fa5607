//! The runners a role starts: local runners on the in-process control plane (single role),
//! or a worker joining its controller over HTTP; and how a worker stops (drain, or at once).

use super::AppError;
use crate::actors::registry::RegisterLocalWorker;
use crate::api::{Capabilities, RegisterRequest};
use crate::artifacts::ArtifactStore;
use crate::control_plane::http::HttpPlane;
use crate::control_plane::local::LocalPlane;
use crate::control_plane::ControlPlane;
use crate::http::state::AppState;
use crate::settings::Settings;
use crate::worker::{backoff, RunnerConfig, WorkerHandle};
use backon::Retryable;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A worker drains for up to `drain` (a second signal stops it at once); without a drain (a
/// single host) the running steps are handed back at once.
pub(super) async fn stop_worker(
    worker: &WorkerHandle,
    drain: Option<Duration>,
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) {
    let Some(drain) = drain else {
        worker.stop_now().await;
        return;
    };
    tracing::info!(
        timeout_ms = drain.as_millis() as u64,
        "draining: finishing the running steps"
    );
    tokio::select! {
        _ = worker.drain(drain) => {}
        _ = term.recv() => { tracing::warn!("second signal: stopping now"); worker.stop_now().await; }
        _ = int.recv() => { tracing::warn!("second signal: stopping now"); worker.stop_now().await; }
    }
}

fn runner_config(settings: &Settings) -> RunnerConfig {
    RunnerConfig {
        work_dir: settings.work_dir(),
        slots: settings.worker.slots.max(1),
        kill_grace: Duration::from_millis(settings.worker.kill_grace_ms),
        heartbeat_interval: Duration::from_millis(settings.worker.heartbeat_interval_ms.max(50)),
        clone_keep: match settings.worker.clone_keep_hours {
            0 => None,
            h => Some(Duration::from_secs(h.saturating_mul(3600))),
        },
        clone_sweep_every: match settings.worker.clone_sweep_interval_ms {
            0 => None,
            ms => Some(Duration::from_millis(ms.max(100))),
        },
        agent_env: settings.worker.agent_env.clone(),
        direct_store: None,
        remotes: crate::workspace::Remotes::from_settings(&settings.git),
        lease_clock: None,
    }
}

pub(super) async fn start_local_runners(
    settings: &Settings,
    st: &AppState,
) -> Result<WorkerHandle, AppError> {
    let labels = settings.worker.labels.clone();
    let worker_id = st
        .registry
        .send(RegisterLocalWorker {
            labels: labels.clone(),
            slots: settings.worker.slots.max(1),
        })
        .await
        .map_err(|e| AppError::Startup(e.to_string()))?
        .map_err(|e| AppError::Startup(e.to_string()))?;
    let plane = Arc::new(LocalPlane {
        worker_id,
        labels,
        lease: st.lease.clone(),
        registry: st.registry.clone(),
    });
    let mut cfg = runner_config(settings);
    // In-process heartbeats are cheap; a short interval makes cancel take effect quickly.
    cfg.heartbeat_interval = cfg.heartbeat_interval.min(Duration::from_millis(500));
    Ok(WorkerHandle::start(plane, cfg))
}

/// The runner settings of a worker (its own artifact store when it uploads directly).
pub(super) fn remote_runner_config(settings: &Settings) -> Result<RunnerConfig, AppError> {
    let mut cfg = runner_config(settings);
    if settings.worker.artifact_upload == "direct" {
        let store = ArtifactStore::from_settings(&settings.artifacts, &settings.data_dir)
            .map_err(|e| AppError::Artifacts(e.to_string()))?;
        cfg.direct_store = Some(store);
    }
    Ok(cfg)
}

/// Registers with the controller (retrying until it answers), sets `joined` (the worker's
/// `/ready`), then starts the runners.
pub(super) async fn join_controller(
    settings: Settings,
    mut cfg: RunnerConfig,
    joined: Arc<AtomicBool>,
) -> WorkerHandle {
    let plane: HttpPlane = register_with_retry(&settings).await;
    joined.store(true, Ordering::Release);
    cfg.heartbeat_interval = Duration::from_millis(plane.heartbeat_interval_ms.max(50));
    cfg.lease_clock = lease_clock(plane.lease_ttl_ms, plane.worker_offline_after_ms);
    WorkerHandle::start(Arc::new(plane), cfg)
}

/// How long a worker's lease lasts unrenewed, by its own clock: the controller takes it back
/// at its TTL, or sooner when the worker has been silent for the offline limit (both count
/// from a moment no earlier than the sending of the worker's last answered heartbeat).
fn lease_clock(ttl_ms: u64, offline_after_ms: Option<u64>) -> Option<Duration> {
    let ms = match offline_after_ms {
        Some(o) if o > 0 => ttl_ms.min(o),
        _ => ttl_ms,
    };
    (ms > 0).then(|| Duration::from_millis(ms))
}

/// Registers with the controller, retrying with backoff until it answers.
async fn register_with_retry(settings: &Settings) -> HttpPlane {
    let bases = settings.worker.controllers();
    let base = bases.join(",");
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
    // The policy has no limit on attempts and retries every error: only an answer ends it
    // (the outer loop is there for the type, not for a second round).
    loop {
        let register = || HttpPlane::register(&bases, &token, req.clone());
        let registered = register
            .retry(backoff(Duration::from_millis(250), Duration::from_secs(5)))
            .sleep(tokio::time::sleep)
            .notify(
                |e, _| tracing::warn!(controller = %base, error = %e, "cannot register; retrying"),
            )
            .await;
        if let Ok(p) = registered {
            tracing::info!(worker_id = %p.worker_id(), controller = %p.controller(), "registered with the controller");
            return p;
        }
    }
}
