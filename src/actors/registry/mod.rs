//! The WorkerRegistryActor and everything it owns: workers. `actor` (the actor and its
//! messages), `service` (what it does), `error`, and its state: `known` (the in-memory copy
//! of the workers table, token checks) and `beats` (heartbeats not yet written). It asks the
//! LeaseActor to renew and take back leases; nothing else of `actors/` imports it. Callers
//! outside use the names exported here.

mod actor;
mod beats;
mod error;
mod known;
mod service;

pub use actor::{
    AuthenticateWorker, CountOnline, Heartbeat, ListWorkers, RegisterLocalWorker, RegisterWorker,
    RevokeWorker, WorkerRegistryActor,
};
pub use error::RegistryError;
pub use known::WorkerIdentity;
pub use service::RegistryService;
