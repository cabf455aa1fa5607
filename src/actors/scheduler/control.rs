//! The control verbs of the runs API: pause (the current step finishes, no new one starts),
//! resume (and really continue), cancel (the worker kills the running step on its next
//! heartbeat), retry (FAILED → PENDING with fresh counters). Each is one transaction that locks
//! the run and checks the transition ([`transition`]); what follows it (advance, finish,
//! start) is the scheduler's service's (`service.rs`).

use super::error::SchedError;
use crate::db::{self, Conn};
use crate::domain::events as ev;
use crate::domain::time::now_ms;
use crate::domain::{RunStatus, StepStatus};

/// The control verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Pause,
    Resume,
    Cancel,
    Retry,
}

fn invalid(from: &str, verb: Control) -> SchedError {
    SchedError::InvalidTransition(format!("cannot {verb:?} a {from} run").to_lowercase())
}

/// Checks and applies the transition inside a transaction.
pub(super) fn transition(
    c: &mut Conn,
    run_id: &str,
    verb: Control,
    (max_all, max_ws): (usize, usize),
) -> Result<(), SchedError> {
    let mut run = db::runs::lock(c, run_id)?;
    let now = now_ms();
    let from = run.status.clone();
    let (to, event) = match (verb, run.run_status()) {
        (Control::Pause, Some(RunStatus::Running)) => (RunStatus::Paused, ev::RUN_PAUSED),
        (Control::Resume, Some(RunStatus::Paused)) => {
            let running = db::runs::with_status(c, RunStatus::Running)?;
            let same_ws = running
                .iter()
                .filter(|r| r.workspace_root == run.workspace_root)
                .count();
            if running.len() >= max_all {
                return Err(SchedError::NoCapacity(format!(
                    "no capacity: {} runs running (max_concurrent_runs = {max_all})",
                    running.len()
                )));
            }
            if same_ws >= max_ws {
                return Err(SchedError::NoCapacity(format!(
                    "no capacity: per-workspace run limit reached (max_runs_per_workspace = {max_ws})"
                )));
            }
            (RunStatus::Running, ev::RUN_RESUMED)
        }
        (Control::Cancel, Some(RunStatus::Pending | RunStatus::Running | RunStatus::Paused)) => {
            (RunStatus::Canceled, ev::RUN_CANCELED)
        }
        (Control::Retry, Some(RunStatus::Failed)) => (RunStatus::Pending, ev::RUN_RETRIED),
        _ => return Err(invalid(&from, verb)),
    };
    run.set_status(to);
    run.updated_at = now;
    match verb {
        Control::Cancel => {
            run.ended_at = Some(now);
            run.waiting_reason = None;
            cancel_waiting_steps(c, run_id, now)?;
        }
        Control::Retry => {
            super::branch::refuse_shared_branch(c, &run)?;
            run.ended_at = None;
            run.failure_reason = None;
            let mut state = db::runs::state(c, run_id)?;
            state.iterations_done = 0;
            state.verify_failures = 0;
            state.review_failures = 0;
            state.watchdog_rewrites = 0;
            state.pending_prompt = None;
            state.finishing = None;
            db::runs::save_state(c, &state)?;
        }
        _ => {}
    }
    if verb == Control::Pause {
        run.waiting_reason = Some("paused".into());
    } else if verb == Control::Resume {
        run.waiting_reason = None;
    }
    db::runs::save(c, &run)?;
    db::events::append(c, Some(run_id), None, event, &ev::run_only(run_id), now)?;
    Ok(())
}

/// Steps of a cancelled run that nobody holds are cancelled at once; a leased step is killed
/// by its worker (heartbeat answer `cancel`) and cancelled when it reports.
fn cancel_waiting_steps(c: &mut Conn, run_id: &str, now: i64) -> Result<(), SchedError> {
    for mut s in db::steps::active_for_run(c, run_id)? {
        if s.step_status().is_some_and(StepStatus::is_claimable) {
            s.set_status(StepStatus::Canceled);
            s.settled = true;
            s.ended_at = Some(now);
            db::steps::save(c, &s)?;
        }
    }
    Ok(())
}
