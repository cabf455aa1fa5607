//! The worker wing: everything a process needs to execute steps — the RunnerActor per slot
//! and its heartbeat (`runner`), one step from claim to completion (`step`), the agent and
//! verify phases (`phases`), the work directory and clones (`workdir`), what a dead process
//! left behind (`leftovers`), output streaming (`streamer`), control-plane retries
//! (`plane_retry`) and the state the slots share (`state`, the leaf).
//!
//! It sees the controller only through the [`ControlPlane`](crate::control_plane::ControlPlane)
//! interface and never imports `db/` or `actors/`: a worker never opens the database. Only
//! `app` starts it, through [`WorkerHandle`].

mod leftovers;
mod phases;
mod plane_retry;
mod runner;
mod state;
mod step;
mod streamer;
mod workdir;

pub use plane_retry::backoff;
pub use runner::WorkerHandle;
pub use state::RunnerConfig;
