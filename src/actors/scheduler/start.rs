//! The transactions of starting runs and of the scheduler's reconciliation tick: PENDING runs
//! start within `max_concurrent_runs` and `max_runs_per_workspace` (their `waiting_reason`
//! says why not), runs whose progress was interrupted (a crash between two transactions) are
//! found, and RUNNING runs whose step no online worker can take say why. Called by the
//! scheduler's service (`service.rs`), in its transactions.

use super::error::SchedError;
use crate::db::models::{decode_labels, labels_match, RunRow, WorkerRow};
use crate::db::{self, Conn};
use crate::domain::events as ev;
use crate::domain::status::{RunStatus, WorkerStatus};
use crate::domain::time::now_ms;
use std::collections::HashMap;

/// Picks the oldest PENDING run that fits the caps and marks it RUNNING (with RUN_STARTED);
/// writes every other PENDING run's `waiting_reason`.
pub(super) fn pick_next(
    c: &mut Conn,
    (max_all, max_ws): (usize, usize),
) -> Result<Option<RunRow>, SchedError> {
    // Controllers sharing the database start runs one at a time, so the caps hold.
    db::runs::serialize_starts(c)?;
    let running = db::runs::with_status(c, RunStatus::Running)?;
    let pending = db::runs::with_status(c, RunStatus::Pending)?;
    let mut picked = None;
    for run in pending {
        // Every cap that holds the run back is named: the per-workspace one still holds it
        // when a global place frees.
        let mut reasons = Vec::new();
        if picked.is_some() || running.len() >= max_all {
            reasons.push(format!(
                "global limit reached: {} runs running (max_concurrent_runs = {max_all})",
                running.len()
            ));
        }
        let same_ws = |r: &RunRow| r.workspace_root == run.workspace_root;
        let in_ws = running.iter().filter(|r| same_ws(r)).count()
            + usize::from(picked.as_ref().is_some_and(same_ws));
        if in_ws >= max_ws {
            reasons.push(format!(
                "per-workspace limit reached (max_runs_per_workspace = {max_ws})"
            ));
        }
        if !reasons.is_empty() {
            let reason = reasons.join("; ");
            db::runs::set_waiting_reason(c, &run.id, run.waiting_reason.as_deref(), Some(&reason))?;
            continue;
        }
        let mut row = run;
        let now = now_ms();
        row.set_status(RunStatus::Running);
        row.started_at = row.started_at.or(Some(now));
        row.updated_at = now;
        row.waiting_reason = None;
        db::runs::save(c, &row)?;
        db::events::append(
            c,
            Some(&row.id),
            None,
            ev::RUN_STARTED,
            &ev::run_started(&row.id, None),
            now,
        )?;
        picked = Some(row);
    }
    Ok(picked)
}

/// Runs whose progress stopped between two transactions (see [`db::runs::stuck`]).
pub(super) fn stuck_runs(c: &mut Conn) -> Result<Vec<String>, SchedError> {
    Ok(db::runs::stuck(c)?)
}

/// Sets `waiting_reason` of RUNNING runs whose queued step no online worker can take, or
/// whose workspace reached its daily budget (holding its steps, see `budget.rs`), or whose
/// agent account holds it (`[api_limits]`: limit reached, usage-limit pause); a fixed
/// number of statements per tick, and a write only where a reason changed. Whether steps held
/// by a budget were let go (claimers should look again).
pub(super) fn explain_waits(c: &mut Conn) -> Result<bool, SchedError> {
    let budgets = super::budget::apply(c, now_ms())?;
    let online = db::workers::with_status(c, WorkerStatus::ONLINE)?;
    // Each run's first waiting step.
    let mut waiting: HashMap<String, String> = HashMap::new();
    for (run_id, labels) in db::steps::waiting_of_running(c)? {
        waiting.entry(run_id).or_insert(labels);
    }
    let accounts = account_waits(c)?;
    for (id, current) in db::runs::reasons_with_status(c, RunStatus::Running)? {
        let reason = waiting.get(&id).and_then(|labels| {
            budgets
                .reasons
                .get(&id)
                .cloned()
                .or_else(|| why_waiting(labels, &online))
                .or_else(|| accounts.get(&id).cloned())
        });
        db::runs::set_waiting_reason(c, &id, current.as_deref(), reason.as_deref())?;
    }
    Ok(budgets.wake)
}

/// Why each RUNNING run whose waiting step's agent account holds it waits: the account is
/// paused after a usage limit, or has as many steps running as its limit (`[api_limits]`).
fn account_waits(c: &mut Conn) -> Result<HashMap<String, String>, SchedError> {
    let mut out = HashMap::new();
    let waiting = db::steps::waiting_accounts_of_running(c)?;
    if waiting.is_empty() {
        return Ok(out);
    }
    let now = c.now_ms()?;
    let reasons: HashMap<String, String> = db::accounts::list(c)?
        .into_iter()
        .filter_map(|a| {
            let why = a.state.waiting_reason(a.in_use, now)?;
            Some((a.account, why))
        })
        .collect();
    for (run, acct) in waiting {
        if let Some(why) = reasons.get(&acct) {
            out.entry(run).or_insert_with(|| why.clone());
        }
    }
    Ok(out)
}

/// Why a step needing `labels` waits with these workers online, if no online worker can take it.
fn why_waiting(labels: &str, online: &[WorkerRow]) -> Option<String> {
    let fit: Vec<_> = online
        .iter()
        .filter(|w| labels_match(labels, &decode_labels(&w.labels)))
        .collect();
    if online.is_empty() {
        Some("no worker is online".to_string())
    } else if fit.is_empty() {
        Some(format!(
            "no online worker has label {}",
            decode_labels(labels).join(", ")
        ))
    } else if fit
        .iter()
        .all(|w| w.worker_status() == Some(WorkerStatus::Draining))
    {
        // Draining workers take nothing new.
        Some("every online worker that could take it is draining".to_string())
    } else {
        None
    }
}
