//! The watchdog: after a verification step, looks at the implementation output that preceded
//! it and decides whether to go on, rewrite the next prompt, or fail the run. Pure; the
//! scheduler owns the counters (rewrite count, previous output) and calls [`evaluate`].

use crate::domain::completion::COMPLETION_TOKEN;
use serde::{Deserialize, Serialize};

/// Rewrites allowed per run; a signal after that fails the run.
pub const MAX_REWRITES: u32 = 2;

/// Outputs more similar than this to the previous one count as a repeated task.
const REPEAT_THRESHOLD: f64 = 0.85;

const STUCK_PHRASES: &[&str] = &[
    "i don't have enough information",
    "i cannot proceed",
    "i'm stuck",
    "i'm unable to",
    "i cannot determine",
    "waiting for clarification",
    "need more context",
];

const MALFORMED_TOKENS: &[&str] = &[
    "<promise> COMPLETE </promise>",
    "<promise>complete</promise>",
    "<promise>COMPLETE</promise >",
];

/// Something wrong with an iteration, in priority order (highest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// The verification after the iteration failed.
    VerificationFailed,
    /// The agent said it cannot go on.
    NoProgress,
    /// The output is nearly the same as the previous iteration's.
    RepeatedTask,
    /// The agent tried to print the completion token but got it wrong.
    MalformedComplete,
}

impl Signal {
    /// The CamelCase name used in `watchdog_failed:<Name>` run failure reasons.
    pub fn reason_name(&self) -> &'static str {
        match self {
            Signal::VerificationFailed => "VerificationFailed",
            Signal::NoProgress => "NoProgress",
            Signal::RepeatedTask => "RepeatedTask",
            Signal::MalformedComplete => "MalformedComplete",
        }
    }

    /// The instruction put in front of the next prompt when this signal causes a rewrite.
    pub fn instruction(&self) -> &'static str {
        match self {
            Signal::VerificationFailed => {
                "The verification commands failed after your last iteration. Read the runner \
                 notes first, fix the failures they show, and commit the fix before any new plan work."
            }
            Signal::NoProgress => {
                "Your last output said you could not proceed. Do not stop or ask for clarification: \
                 make reasonable assumptions, write them down in the plan, pick the selected task, \
                 make a concrete change and commit it."
            }
            Signal::RepeatedTask => {
                "Your last output repeated the previous one almost line for line: you are going in \
                 circles. Pick the selected task, make a concrete change to the code, commit it, and \
                 mark the task in the plan. If the task is already done, mark it [x] and take the next one."
            }
            Signal::MalformedComplete => {
                "Your last output tried to signal completion with a malformed token. If no unchecked \
                 task is left, print exactly <promise>COMPLETE</promise> on its own line as the last \
                 line; otherwise continue with the next task and do not print the token."
            }
        }
    }
}

/// What the watchdog looks at after one verification step.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchdogInput<'a> {
    /// Whether that verification failed.
    pub verification_failed: bool,
    /// The implementation output being evaluated.
    pub output: &'a str,
    /// The previously evaluated implementation output, if any.
    pub previous_output: Option<&'a str>,
    /// Rewrites already done in this run.
    pub rewrite_count: u32,
}

/// What the pipeline does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing to do (or only a failed verification, which the runner notes already cover).
    Continue,
    /// Prefix the next implementation prompt with `instruction` (see [`rewrite_prompt`]).
    Rewrite { signal: Signal, instruction: String },
    /// Fail the run with `watchdog_failed:<signal.reason_name()>`.
    Fail { signal: Signal },
}

/// Line similarity: equal lines at the same index over the larger line count; two empty
/// texts are identical (1.0).
pub fn similarity(a: &str, b: &str) -> f64 {
    let (a_lines, b_lines): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let max = a_lines.len().max(b_lines.len());
    if max == 0 {
        return 1.0;
    }
    let equal = a_lines.iter().zip(&b_lines).filter(|(x, y)| x == y).count();
    equal as f64 / max as f64
}

/// The highest-priority signal raised by this input, if any.
pub fn primary_signal(input: &WatchdogInput) -> Option<Signal> {
    if input.verification_failed {
        return Some(Signal::VerificationFailed);
    }
    let lower = input.output.to_lowercase();
    if STUCK_PHRASES.iter().any(|p| lower.contains(p)) {
        return Some(Signal::NoProgress);
    }
    if input
        .previous_output
        .is_some_and(|prev| similarity(input.output, prev) > REPEAT_THRESHOLD)
    {
        return Some(Signal::RepeatedTask);
    }
    if is_malformed_complete(input.output, &lower) {
        return Some(Signal::MalformedComplete);
    }
    None
}

fn is_malformed_complete(output: &str, lower: &str) -> bool {
    let mentions =
        output.contains("<promise>") || output.contains("</promise>") || lower.contains("complete");
    mentions
        && !output.contains(COMPLETION_TOKEN)
        && MALFORMED_TOKENS.iter().any(|t| output.contains(t))
}

/// Decides what follows an evaluated iteration.
pub fn evaluate(input: &WatchdogInput) -> Decision {
    match primary_signal(input) {
        None => Decision::Continue,
        Some(signal) if input.rewrite_count >= MAX_REWRITES => Decision::Fail { signal },
        Some(Signal::VerificationFailed) => Decision::Continue,
        Some(signal) => Decision::Rewrite {
            signal,
            instruction: signal.instruction().to_string(),
        },
    }
}

/// The rewritten prompt: the watchdog's instruction in front of the last implementation prompt.
pub fn rewrite_prompt(instruction: &str, last_prompt: &str) -> String {
    format!(
        "# IMPORTANT: Read this section carefully before continuing\n\n---\n\n\
         ## Watchdog Intervention\n\n{instruction}\n\n---\n\n{last_prompt}"
    )
}

#[cfg(test)]
mod tests;
