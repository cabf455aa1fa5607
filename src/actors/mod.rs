//! The actors of the control side and the services behind them. Each piece of state has one
//! owner, each in its own folder with its actor, messages, service and state: the
//! SchedulerActor (`scheduler/`: run progress), the LeaseActor (`lease/`: leases) and the
//! WorkerRegistryActor (`registry/`: workers). What the scheduler and the lease owner both
//! need — the decision that follows a finished step, the prompts, the run's stored settings —
//! is `run_progress/`, below both; the event hub (`events`) and the timers (`ticks`) are
//! leaves every owner may use. Imports point down: registry → lease → run_progress, and
//! scheduler → lease, run_progress; no owner reaches into another's state. The RunnerActor
//! that executes steps lives in the worker wing (`src/worker/`). Callers outside (`app`,
//! `http`, `control_plane`) use the owners' `mod.rs` exports.

pub mod events;
pub mod lease;
pub mod peers;
pub mod registry;
pub mod run_progress;
pub mod scheduler;
mod ticks;
