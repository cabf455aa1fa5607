//! The LeaseActor and everything it owns: leases. `actor` (the actor and its messages),
//! `service` (what it does), `writes` (a holder's output, events and artifacts), `completion`
//! and `complete_pg` (a completion, transactional and on Postgres in one statement),
//! `returns` (leases taken back, as recorded), `assignment` (what a worker is handed),
//! `authorize` (the epoch check), `accounts` (the agent accounts' limits), `error`, and its state: `waiters` (long polls), `unreported`
//! (grants a worker may not know of), `kept` (claim snapshots). It decides with
//! `run_progress` on the scheduler's behalf and tells the scheduler through a `FollowUp`
//! callback that `app` wires; it imports neither the scheduler nor the registry. Callers
//! outside use the names exported here.

mod accounts;
mod actor;
mod assignment;
mod authorize;
mod complete_pg;
mod completion;
mod error;
mod kept;
mod returns;
mod service;
mod unreported;
mod waiters;
mod writes;

pub use accounts::prepare as prepare_accounts;
pub use actor::{
    AppendOutput, ClaimStep, CompleteStep, LeaseActor, QueueChanged, ReadArtifact, RecordStepEvent,
    ReleaseLease, ReleaseWorkerLeases, RenewLeases, StoreArtifact,
};
pub use authorize::authorize;
pub use error::LeaseError;
pub use returns::release_all_at_restart;
pub use service::{FollowUpSink, LeaseService, LeaseServiceParts};
