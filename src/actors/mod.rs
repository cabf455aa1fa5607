//! The actors and the services behind them. Each piece of state has one owner: the
//! SchedulerActor (run progress), the LeaseActor (leases), the WorkerRegistryActor (workers)
//! and the RunnerActor (executing steps). The event hub fans changes out to live streams.

use actix::{Actor, AsyncContext, Context};
use std::future::Future;
use std::time::Duration;

pub mod assignment;
mod completion;
mod control;
mod decide;
pub mod events;
mod finish;
mod finish_git;
pub mod lease;
mod lease_returns;
mod lease_service;
mod lease_writes;
mod liveness;
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

/// Runs `job` every `every`, one run at a time, beside the actor's messages: unlike a
/// `ctx.wait` in `run_interval`, a slow run (a busy database) delays the next tick but never
/// holds the actor's mailbox, so claims, heartbeats and step completions go on meanwhile.
/// Stops with the actor.
pub(crate) fn background_tick<A, F, Fut>(ctx: &mut Context<A>, every: Duration, job: F)
where
    A: Actor<Context = Context<A>>,
    F: Fn() -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    ctx.spawn(actix::fut::wrap_future::<_, A>(async move {
        let start = tokio::time::Instant::now() + every;
        let mut t = tokio::time::interval_at(start, every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            t.tick().await;
            job().await;
        }
    }));
}
