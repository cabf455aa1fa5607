//! The daily budgets of workspaces (`[budgets]`), on the scheduler's tick: a workspace whose
//! runs' agent steps spent its budget in the current UTC day has its queued steps held until
//! 00:00 UTC (their `not_before`), and its waiting runs say so; a hold that no longer applies
//! (the budget was raised or removed) is let go. A step queued by a decision is held at once
//! (`run_progress::decide::daily_hold`); this catches the steps queued before the budget was
//! reached (other runs of the workspace, steps handed back). Runs in the tick's transaction.

use super::error::SchedError;
use crate::db::{self, Conn};
use crate::domain::status::RunStatus;
use crate::domain::usage::{day_start, DAY_MS};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};

/// What the tick found.
#[derive(Debug, Default)]
pub(super) struct Holds {
    /// Why each RUNNING run of a workspace past its budget waits, by run id.
    pub reasons: HashMap<String, String>,
    /// Held steps may be claimable now (a hold let go, or a new day): wake the claimers.
    pub wake: bool,
}

/// Whether this process has let go the holds of a budget no longer configured.
static UNSET_CHECKED: AtomicBool = AtomicBool::new(false);
/// Whether the last tick held a workspace.
static HELD: AtomicBool = AtomicBool::new(false);

/// Holds the queued steps of every workspace past its daily budget until the next UTC day,
/// and lets go those of workspaces no longer past it.
pub(super) fn apply(c: &mut Conn, now: i64) -> Result<Holds, SchedError> {
    let budgets = crate::settings::installed_budgets();
    if budgets.is_none() && UNSET_CHECKED.swap(true, Ordering::Relaxed) {
        return Ok(Holds::default());
    }
    let until = day_start(now) + DAY_MS;
    let running = db::runs::with_status(c, RunStatus::Running)?;
    let mut holds = Holds::default();
    let mut released = 0;
    let Some(budgets) = budgets else {
        // No budget (perhaps no longer): steps held until tonight go now, checked once.
        let ids: Vec<String> = running.iter().map(|r| r.id.clone()).collect();
        holds.wake = db::steps::release_hold(c, &ids, until)? > 0;
        return Ok(holds);
    };
    let mut by_workspace: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for r in &running {
        by_workspace
            .entry(r.workspace_root.as_str())
            .or_default()
            .push(r.id.clone());
    }
    for (workspace, ids) in by_workspace {
        let budget = budgets.for_workspace(workspace);
        let reason = if budget.limits() {
            let spent = db::usage::workspace_since(c, workspace, day_start(now))?;
            budget.reached(&spent)
        } else {
            None
        };
        match reason {
            Some(reason) => {
                db::steps::hold_until(c, &ids, until)?;
                for id in ids {
                    holds.reasons.insert(id, reason.clone());
                }
            }
            None => released += db::steps::release_hold(c, &ids, until)?,
        }
    }
    let held_before = HELD.swap(!holds.reasons.is_empty(), Ordering::Relaxed);
    holds.wake = released > 0 || (held_before && holds.reasons.is_empty());
    Ok(holds)
}
