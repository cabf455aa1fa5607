//! The SchedulerActor and everything it owns: run progress. `actor` (the actor and its
//! messages), `service` (what it does), `start` and `control` (the transactions of starting
//! runs, the tick and the control verbs), `finish` and `finish_git` (finishing a run),
//! `submit` (validating a new run), `branch` (one run not ended per git run branch), `error`.
//! It tells the LeaseActor about queued steps (`QueueChanged`) and decides with
//! `run_progress`; nothing below imports it. Callers outside use the names exported here.

mod actor;
mod branch;
mod budget;
mod control;
mod error;
mod expire;
mod finish;
mod finish_git;
mod service;
mod start;
mod submit;

pub use actor::{ControlRun, CreateRun, SchedulerActor, StepFinished};
pub use control::Control;
pub use error::SchedError;
pub use expire::EXPIRED;
pub(crate) use finish_git::{git_base_ref, git_run_head};
pub use service::SchedulerService;
