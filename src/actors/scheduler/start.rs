//! Starting runs and the scheduler's reconciliation tick: PENDING runs start within
//! `max_concurrent_runs` and `max_runs_per_workspace` (their `waiting_reason` says why not),
//! a shared_fs run gets its worktree, and runs whose progress was interrupted (a crash between
//! two transactions) are advanced again.

use super::assignment::{run_config, worktree};
use super::scheduler_service::{SchedError, SchedulerService};
use crate::db::models::{decode_labels, labels_match, RunRow, WorkerRow};
use crate::db::{self, Conn};
use crate::domain::events as ev;
use crate::domain::time::now_ms;
use crate::domain::WorkspaceSource;
use crate::workspace::worktree as wt;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

impl SchedulerService {
    /// Asks the starter task to start as many PENDING runs as the caps allow. Returns at once:
    /// runs are started by that one task only, so starting is serial (the caps hold) and
    /// cannot re-enter itself — a run that fails at setup is finished from inside a start
    /// pass, and finishing only asks for another pass.
    pub fn request_start(&self) {
        self.start_wanted.notify_one();
    }

    /// The starter task, spawned once by the SchedulerActor: a pass per request (requests made
    /// during a pass give one more pass after it), until the actor stops.
    pub async fn run_starter(self: Arc<Self>) {
        loop {
            self.start_wanted.notified().await;
            if let Err(e) = self.start_pass().await {
                tracing::warn!(error = %e, "cannot start pending runs");
            }
        }
    }

    /// Starts as many PENDING runs as the caps allow. Private to this module, called only by
    /// [`run_starter`](Self::run_starter).
    async fn start_pass(self: &Arc<Self>) -> Result<(), SchedError> {
        loop {
            let caps = (
                self.settings.max_concurrent_runs as usize,
                self.settings.max_runs_per_workspace as usize,
            );
            let picked = self.db.tx(move |c| pick_next(c, caps)).await?;
            let Some(run) = picked else { return Ok(()) };
            tracing::info!(run_id = %run.id, "run started");
            if let Err(reason) = self.prepare_workspace(&run).await {
                self.fail_now(&run.id, &format!("run_error:{reason}"))
                    .await?;
                continue;
            }
            self.advance(&run.id).await?;
        }
    }

    /// Creates the worktree of a shared_fs run (reused after a restart or retry).
    async fn prepare_workspace(&self, run: &RunRow) -> Result<(), String> {
        if run.workspace_source != WorkspaceSource::SharedFs.as_str() {
            return Ok(());
        }
        let r = run.clone();
        let plan = tokio::task::spawn_blocking(move || {
            let root = Path::new(&r.workspace_root);
            let w = match worktree(&r) {
                Some(w) => w,
                None => {
                    let c = run_config(&r);
                    wt::plan_worktree(
                        root,
                        &r.name,
                        c.base_branch.as_deref(),
                        &c.run_branch_prefix,
                        c.merge_target_branch.as_deref(),
                        c.merge_strategy,
                        &c.worktree_path_template,
                    )
                    .map_err(|e| format!("cannot plan worktree: {e}"))?
                }
            };
            wt::create_worktree(root, &w).map_err(|e| format!("cannot create worktree: {e}"))?;
            Ok::<_, String>(w)
        })
        .await
        .map_err(|e| e.to_string())??;
        let (id, json) = (
            run.id.clone(),
            serde_json::to_string(&plan).map_err(|e| e.to_string())?,
        );
        self.db
            .tx(move |c| {
                let mut row = db::runs::require(c, &id)?;
                row.worktree_json = Some(json);
                row.worktree_cleanup_status = None;
                row.worktree_cleaned_at = None;
                row.updated_at = now_ms();
                db::runs::save(c, &row)?;
                let p = ev::worktree(&id, &plan.worktree_path, Some(&plan.run_branch));
                db::events::append(c, Some(&id), None, ev::WORKTREE_CREATED, &p, row.updated_at)?;
                Ok::<_, SchedError>(())
            })
            .await
            .map_err(|e| e.to_string())?;
        self.hub.notify(&run.id);
        Ok(())
    }

    /// Fails a run at once (before any step could run), then finishes it.
    pub(super) async fn fail_now(
        self: &Arc<Self>,
        run_id: &str,
        reason: &str,
    ) -> Result<(), SchedError> {
        let (id, why) = (run_id.to_string(), reason.to_string());
        self.db
            .tx(move |c| {
                let mut state = db::runs::state(c, &id)?;
                let plan = super::scheduler_service::FinishPlan {
                    completed: false,
                    reason: Some(why),
                };
                state.finishing = serde_json::to_string(&plan).ok();
                db::runs::save_state(c, &state)?;
                Ok::<_, SchedError>(())
            })
            .await?;
        self.finish(run_id).await;
        Ok(())
    }

    /// The periodic reconciliation: start runs, re-advance interrupted ones, explain waits.
    pub async fn tick(self: &Arc<Self>) -> Result<(), SchedError> {
        self.request_start();
        let stuck = self.db.run(stuck_runs).await?;
        for id in stuck {
            if let Err(e) = self.advance(&id).await {
                tracing::warn!(run_id = %id, error = %e, "cannot advance run");
            }
        }
        self.db.tx(explain_waits).await?;
        Ok(())
    }
}

/// Picks the oldest PENDING run that fits the caps and marks it RUNNING (with RUN_STARTED);
/// writes every other PENDING run's `waiting_reason`.
fn pick_next(
    c: &mut Conn,
    (max_all, max_ws): (usize, usize),
) -> Result<Option<RunRow>, SchedError> {
    let running = db::runs::with_status(c, "RUNNING")?;
    let pending = db::runs::with_status(c, "PENDING")?;
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
        row.status = "RUNNING".into();
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
fn stuck_runs(c: &mut Conn) -> Result<Vec<String>, SchedError> {
    Ok(db::runs::stuck(c)?)
}

/// Sets `waiting_reason` of RUNNING runs whose queued step no online worker can take (a fixed
/// number of statements per tick, and a write only where a reason changed).
fn explain_waits(c: &mut Conn) -> Result<(), SchedError> {
    let online = db::workers::with_status(c, &["idle", "busy", "draining"])?;
    // Each run's first waiting step.
    let mut waiting: HashMap<String, String> = HashMap::new();
    for (run_id, labels) in db::steps::waiting_of_running(c)? {
        waiting.entry(run_id).or_insert(labels);
    }
    for (id, current) in db::runs::reasons_with_status(c, "RUNNING")? {
        let reason = waiting
            .get(&id)
            .and_then(|labels| why_waiting(labels, &online));
        db::runs::set_waiting_reason(c, &id, current.as_deref(), reason.as_deref())?;
    }
    Ok(())
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
    } else if fit.iter().all(|w| w.status == "draining") {
        // Draining workers take nothing new.
        Some("every online worker that could take it is draining".to_string())
    } else {
        None
    }
}
