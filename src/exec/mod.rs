//! Process execution for steps: spawning the agent and the verification commands in their own
//! process groups, capturing their output with bounded memory, timeouts and cancellation.
//! Called by the runner; it knows nothing of runs, leases or the database.

pub mod agent;
pub mod agent_output;
pub mod group;
pub mod process;
pub mod tail;
pub mod verify;

#[cfg(test)]
mod test_support;
