//! What every handler can reach: the actors' addresses (present only when this role runs
//! them), the read side of storage, the stores, and the settings that shape requests.

use crate::actors::events::EventHub;
use crate::actors::lease::LeaseActor;
use crate::actors::registry::WorkerRegistryActor;
use crate::actors::scheduler::SchedulerActor;
use crate::artifacts::ArtifactStore;
use crate::db::Db;
use crate::metrics::Metrics;
use crate::output_store::OutputStore;
use crate::settings::{LimitSettings, Secret};
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
    pub metrics: Arc<Metrics>,
    pub scheduler: Addr<SchedulerActor>,
    pub lease: Addr<LeaseActor>,
    pub registry: Addr<WorkerRegistryActor>,
    pub client_token: Option<Secret>,
    pub join_token: Option<Secret>,
    pub limits: LimitSettings,
    pub ready: Arc<AtomicBool>,
}
