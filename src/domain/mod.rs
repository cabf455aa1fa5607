//! Pure types and state machines of runs, steps, leases and workers. No I/O here.

pub mod status;
pub mod time;

pub use status::*;
