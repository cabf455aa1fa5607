//! Pure types and state machines of runs, steps, leases and workers. No I/O here.

pub mod access;
pub mod api_limit;
pub mod artifact_kind;
pub mod completion;
pub mod events;
pub mod pipeline;
pub mod plan;
pub mod prompt;
pub mod report;
pub mod run_config;
pub mod status;
pub mod text;
pub mod time;
pub mod usage;
pub mod watchdog;

pub use status::*;
