//! What every handler can reach: the actors' addresses (present only when this role runs
//! them), the read side of storage, the stores, and the settings that shape requests.

use super::stream_slots::StreamSlots;
use super::uploads::UploadSlots;
use crate::actors::events::EventHub;
use crate::actors::lease::LeaseActor;
use crate::actors::registry::WorkerRegistryActor;
use crate::actors::scheduler::SchedulerActor;
use crate::artifacts::ArtifactStore;
use crate::db::Db;
use crate::metrics::Metrics;
use crate::output_store::OutputStore;
use crate::settings::{ClientToken, LimitSettings, Secret};
use crate::workspace::Mirrors;
use actix::Addr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Shared handler state.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub hub: EventHub,
    pub store: ArtifactStore,
    pub output: OutputStore,
    /// The cached mirrors of git runs' repositories (their review works there).
    pub mirrors: Arc<Mirrors>,
    pub metrics: Arc<Metrics>,
    pub scheduler: Addr<SchedulerActor>,
    pub lease: Addr<LeaseActor>,
    pub registry: Addr<WorkerRegistryActor>,
    /// Client tokens and their scopes (empty: the runs API is open).
    pub clients: Arc<[ClientToken]>,
    pub join_token: Option<Secret>,
    /// Whether a run request may name commands or paths without the `exec` scope.
    pub request_commands_allowed: bool,
    pub limits: LimitSettings,
    /// Artifact uploads in flight per worker.
    pub uploads: Arc<UploadSlots>,
    /// Open output streams per run and per client address.
    pub streams: Arc<StreamSlots>,
    pub ready: Arc<AtomicBool>,
}
