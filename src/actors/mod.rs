//! The actors and the services behind them. Each piece of state has one owner: the
//! SchedulerActor (run progress), the LeaseActor (leases), the WorkerRegistryActor (workers)
//! and the RunnerActor (executing steps). The event hub fans changes out to live streams.

pub mod assignment;
mod control;
pub mod events;
mod finish;
mod finish_git;
pub mod lease;
mod lease_returns;
mod lease_service;
mod lease_writes;
mod phases;
mod plane_retry;
mod prompts;
pub mod registry;
mod registry_admin;
mod registry_service;
pub mod runner;
mod runner_step;
pub mod scheduler;
mod scheduler_service;
mod start;
mod streamer;
pub mod submit;
pub mod waiters;
mod workdir;

pub use lease_writes::artifact_kind;
pub use scheduler_service::INFRA_PREFIX;
