//! The run pipeline as a pure state machine: given a run's counters and the step that just
//! finished, decide what happens next (implementation → review → verification → …, the final
//! verification after the completion token, failure limits, the watchdog). The scheduler
//! applies the decision inside one transaction; nothing here does I/O.

use super::run_config::RunConfig;
use super::status::StepPhase;
use super::watchdog::{self, Decision as WatchdogDecision, WatchdogInput};

/// Prefix of a step failure reason that blames infrastructure (lost leases, the artifact
/// store), not the agent.
pub const INFRA_PREFIX: &str = "infrastructure: ";

/// The counters of a run that survive restarts (stored in `run_state`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub iterations_done: u32,
    pub verify_failures: u32,
    pub review_failures: u32,
    pub watchdog_rewrites: u32,
}

/// What the scheduler knows about the step that just finished.
#[derive(Debug, Clone, Default)]
pub struct Finished<'a> {
    pub phase: Option<StepPhase>,
    pub succeeded: bool,
    /// The final verification that follows the completion token.
    pub is_final: bool,
    pub completion_detected: bool,
    /// Why the step failed (runner error, lost leases, upload failure …).
    pub failure_reason: Option<&'a str>,
    /// The step failed for infrastructure reasons (lost leases, artifact store), not because
    /// the agent or a verify command failed.
    pub infra_failure: bool,
    /// Verification: the runner notes written on failure.
    pub runner_notes: Option<&'a str>,
    /// Output of the implementation step this verification follows, and of the one before.
    pub last_impl_output: Option<&'a str>,
    pub previous_impl_output: Option<&'a str>,
    /// The prompt of the last implementation step (wrapped by a watchdog rewrite).
    pub last_impl_prompt: Option<&'a str>,
}

/// How a run ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `mode` is the completion mode (`trailing`/`exact`), or `merge` when a merge ran.
    Completed,
    Failed {
        reason: String,
    },
}

/// What the scheduler must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Queue a step of this phase.
    Enqueue { phase: StepPhase, is_final: bool },
    /// The run is done.
    Finish(Outcome),
}

/// Side effects on the run's state that go with a decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    /// New runner notes: `Some("")` clears them, `None` leaves them.
    pub runner_notes: Option<String>,
    /// A watchdog rewrite: the prompt the next implementation step uses once.
    pub rewrite: Option<Rewrite>,
}

/// A watchdog intervention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    pub signal: String,
    pub prompt: String,
}

/// The decision for a finished step, with the updated counters and effects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub next: Next,
    pub counters: Counters,
    pub effects: Effects,
}

fn fail(reason: String) -> Next {
    Next::Finish(Outcome::Failed { reason })
}

/// The first step of a run (or of a retried run).
pub fn first_step(counters: &Counters, config: &RunConfig) -> Decision {
    let mut counters = counters.clone();
    let next = start_implementation(&mut counters, config);
    Decision {
        next,
        counters,
        effects: Effects::default(),
    }
}

/// Queues an implementation step unless the iteration budget is used up.
fn start_implementation(counters: &mut Counters, config: &RunConfig) -> Next {
    if counters.iterations_done >= config.iterations {
        return fail(format!("iteration_limit_reached:{}", config.iterations));
    }
    counters.iterations_done += 1;
    Next::Enqueue {
        phase: StepPhase::Implementation,
        is_final: false,
    }
}

/// Decides what follows a finished step.
pub fn after_step(f: &Finished<'_>, counters: &Counters, config: &RunConfig) -> Decision {
    let mut c = counters.clone();
    let mut effects = Effects::default();
    let next = match f.phase {
        Some(StepPhase::Implementation) => after_implementation(f, &mut c, config),
        Some(StepPhase::Review) => after_review(f, &mut c, config),
        Some(StepPhase::Verification) => after_verification(f, &mut c, config, &mut effects),
        // Watchdog and merge steps are not scheduled as queued steps; treat them like a
        // finished iteration.
        _ => start_implementation(&mut c, config),
    };
    Decision {
        next,
        counters: c,
        effects,
    }
}

fn after_implementation(f: &Finished<'_>, c: &mut Counters, config: &RunConfig) -> Next {
    if !f.succeeded {
        let reason = f.failure_reason.unwrap_or("agent failed");
        return if f.infra_failure {
            fail(format!("infrastructure_failed:{reason}"))
        } else {
            fail(format!("runner_execution_failed:{reason}"))
        };
    }
    let _ = c;
    if f.completion_detected {
        return Next::Enqueue {
            phase: StepPhase::Verification,
            is_final: true,
        };
    }
    let phase = if config.reviewer {
        StepPhase::Review
    } else {
        StepPhase::Verification
    };
    Next::Enqueue {
        phase,
        is_final: false,
    }
}

fn after_review(f: &Finished<'_>, c: &mut Counters, config: &RunConfig) -> Next {
    if f.infra_failure {
        let reason = f.failure_reason.unwrap_or("lost");
        return fail(format!("infrastructure_failed:{reason}"));
    }
    if f.succeeded {
        c.review_failures = 0;
    } else {
        c.review_failures += 1;
        let limit = config.max_consecutive_review_failures;
        if limit > 0 && c.review_failures >= limit {
            return fail(format!("max_consecutive_failures:review:{limit}"));
        }
    }
    // A failed review does not block the loop (the old daemon re-ran it forever): the
    // verification decides whether the work holds.
    Next::Enqueue {
        phase: StepPhase::Verification,
        is_final: false,
    }
}

fn after_verification(
    f: &Finished<'_>,
    c: &mut Counters,
    config: &RunConfig,
    effects: &mut Effects,
) -> Next {
    if f.infra_failure {
        let reason = f.failure_reason.unwrap_or("lost");
        return fail(format!("infrastructure_failed:{reason}"));
    }
    if f.succeeded {
        c.verify_failures = 0;
        effects.runner_notes = Some(String::new());
        if f.is_final {
            return Next::Finish(Outcome::Completed);
        }
    } else {
        c.verify_failures += 1;
        effects.runner_notes = Some(f.runner_notes.unwrap_or_default().to_string());
        let limit = config.max_consecutive_verification_failures;
        if limit > 0 && c.verify_failures >= limit {
            return fail(format!("max_consecutive_failures:verification:{limit}"));
        }
    }
    if !f.is_final {
        let input = WatchdogInput {
            verification_failed: !f.succeeded,
            output: f.last_impl_output.unwrap_or_default(),
            previous_output: f.previous_impl_output,
            rewrite_count: c.watchdog_rewrites,
        };
        match watchdog::evaluate(&input) {
            WatchdogDecision::Continue => {}
            WatchdogDecision::Rewrite {
                signal,
                instruction,
            } => {
                c.watchdog_rewrites += 1;
                let base = f.last_impl_prompt.unwrap_or_default();
                effects.rewrite = Some(Rewrite {
                    signal: serde_json::to_value(signal)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    prompt: watchdog::rewrite_prompt(&instruction, base),
                });
            }
            WatchdogDecision::Fail { signal } => {
                return fail(format!("watchdog_failed:{}", signal.reason_name()));
            }
        }
    }
    start_implementation(c, config)
}

#[cfg(test)]
mod tests;
