//! Finishing a run once the pipeline decided its outcome: the optional merge into
//! `merge_target_branch` (recorded as a merge step), the push of a completed git run's branch,
//! `report.tsv` and `summary.json`, worktree cleanup (the git side is in `finish_git.rs`), and
//! the terminal status with its event. The
//! decision is stored first (`run_state.finishing`), so a crash in the middle is finished again
//! at the next tick. The [`Finisher`] also stores the artifacts the controller itself produces
//! (rewritten prompts). Owned by the scheduler's service, which alone calls it. A run is
//! finished by one call at a time, across controllers too: the call holds the run (see
//! `Finisher::finish`).

use super::error::SchedError;
use super::finish_git::{
    cleanup_worktree, git_base_ref, git_run_head, merge_if_configured, push_if_configured,
    MergeResult, PushResult,
};
use crate::actors::events::EventHub;
use crate::actors::peers::{Hold, Peers};
use crate::actors::run_progress::logs::copy_to_run_logs;
use crate::actors::run_progress::outcome::FinishPlan;
use crate::api::{REVIEW_DIFF_MAX_BYTES, REVIEW_DIFF_NAME};
use crate::artifacts::run_logs::RunLogs;
use crate::artifacts::ArtifactStore;
use crate::db::models::{new_id, ArtifactRow, RunRow, StepRow};
use crate::db::{self, Db, DbError};
use crate::domain::artifact_kind::artifact_kind;
use crate::domain::events as ev;
use crate::domain::report::{self, RunFacts, StepFacts};
use crate::domain::time::now_ms;
use crate::domain::{RunStatus, WorkspaceSource};
use crate::workspace::Mirrors;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// The artifact holding a git run's branch as it ended.
pub const FINAL_BUNDLE: &str = "run.bundle";

/// Finishes runs; remembers which ones this process is finishing right now, and holds each
/// against the other controllers while it does (`Peers::hold`).
pub struct Finisher {
    db: Db,
    hub: EventHub,
    store: ArtifactStore,
    /// For pushing a completed git run's branch.
    mirrors: Arc<Mirrors>,
    /// Runs being finished by this process right now.
    finishing: Mutex<HashSet<String>>,
    /// The other controllers, which must not finish the same run at the same time.
    peers: Arc<Peers>,
    /// Where copies of the run's files go (a single host; else disabled).
    run_logs: RunLogs,
}

impl Finisher {
    pub fn new(
        db: Db,
        hub: EventHub,
        store: ArtifactStore,
        mirrors: Arc<Mirrors>,
        peers: Arc<Peers>,
    ) -> Self {
        Finisher {
            db,
            hub,
            store,
            mirrors,
            finishing: Mutex::new(HashSet::new()),
            peers,
            run_logs: RunLogs::disabled(),
        }
    }

    /// Copies the run's files where the existing daemon kept them, too.
    pub fn with_run_logs(mut self, logs: RunLogs) -> Self {
        self.run_logs = logs;
        self
    }

    /// Carries out the stored terminal decision of a run. Safe to call again: returns false,
    /// doing nothing, while another call — of this process or of another controller — is
    /// finishing the run. The decision and the run's status are read once the run is held,
    /// so a finish that comes after another finds the work done.
    pub async fn finish(&self, run_id: &str) -> bool {
        let mark = |on: bool| {
            let mut set = self.finishing.lock().unwrap_or_else(|p| p.into_inner());
            match on {
                true => set.insert(run_id.to_string()),
                false => set.remove(run_id),
            }
        };
        if !mark(true) {
            return false;
        }
        if !self.peers.hold(Hold::Finish, run_id).await {
            mark(false);
            tracing::debug!(run_id, "another controller is finishing the run");
            return false;
        }
        if let Err(e) = self.finish_inner(run_id).await {
            tracing::error!(run_id, error = %e, "cannot finish run (will retry on the next tick)");
        }
        self.peers.let_go(Hold::Finish, run_id);
        mark(false);
        true
    }

    async fn finish_inner(&self, run_id: &str) -> Result<(), SchedError> {
        let id = run_id.to_string();
        let (run, state) = self
            .db
            .run(move |c| {
                Ok::<_, SchedError>((db::runs::require(c, &id)?, db::runs::state(c, &id)?))
            })
            .await?;
        let Some(plan) = state
            .finishing
            .as_deref()
            .and_then(|j| serde_json::from_str::<FinishPlan>(j).ok())
        else {
            return Ok(());
        };
        if !run.status_in(&[RunStatus::Running, RunStatus::Paused]) {
            return Ok(());
        }
        let config = run.config();
        let mut completed = plan.completed;
        let mut reason = plan.reason.clone().unwrap_or_default();
        let mut mode = config.completion_mode.as_str().to_string();
        let mut merge_commit = None;
        if completed {
            match merge_if_configured(&self.db, &run).await? {
                MergeResult::NotConfigured => {}
                MergeResult::Merged(sha) => {
                    mode = "merge".into();
                    merge_commit = sha;
                }
                MergeResult::Failed(e) => {
                    completed = false;
                    reason = format!("merge_failed:{e}");
                }
            }
        }
        let mut pushed = None;
        if completed {
            match push_if_configured(&self.db, &self.store, &self.mirrors, &run).await {
                PushResult::NotConfigured => {}
                PushResult::Pushed { branch, commit } => pushed = Some((branch, commit)),
                // The bundle stays the run's result (`run.bundle`, written below).
                PushResult::Failed(e) => {
                    completed = false;
                    reason = format!("push_failed:{e}");
                }
            }
        }
        if completed {
            self.write_diff_snapshot(&run).await;
        }
        self.write_final_artifacts(&run, completed, false, &reason)
            .await;
        let cleanup = cleanup_worktree(&self.db, &run, completed).await;
        let id = run_id.to_string();
        self.db
            .tx(move |c| {
                let mut row = db::runs::lock(c, &id)?;
                if !row.status_in(&[RunStatus::Running, RunStatus::Paused]) {
                    return Ok(());
                }
                let now = now_ms();
                let mut state = db::runs::state(c, &id)?;
                state.finishing = None;
                db::runs::save_state(c, &state)?;
                row.set_status(if completed {
                    RunStatus::Completed
                } else {
                    RunStatus::Failed
                });
                row.ended_at = Some(now);
                row.updated_at = now;
                row.waiting_reason = None;
                row.failure_reason = (!completed).then(|| reason.clone());
                row.merge_commit = merge_commit.or(row.merge_commit.take());
                if let Some((branch, commit)) = &pushed {
                    row.pushed_branch = Some(branch.clone());
                    row.pushed_commit = Some(commit.clone());
                }
                if let Some((status, at)) = &cleanup {
                    row.worktree_cleanup_status = Some(status.clone());
                    row.worktree_cleaned_at = *at;
                }
                db::runs::save(c, &row)?;
                let (t, p) = if completed {
                    (ev::RUN_COMPLETED, ev::run_completed(&id, &mode))
                } else {
                    (ev::RUN_FAILED, ev::run_failed(&id, &reason))
                };
                db::events::append(c, Some(&id), None, t, &p, now)?;
                tracing::info!(run_id = %id, status = %row.status, "run finished");
                Ok::<_, SchedError>(())
            })
            .await?;
        self.hub.notify(run_id);
        Ok(())
    }

    /// Writes the final artifacts and cleans the worktree of a cancelled run.
    pub async fn finalize_canceled(&self, run_id: &str) {
        let id = run_id.to_string();
        let Ok(run) = self.db.run(move |c| db::runs::require(c, &id)).await else {
            return;
        };
        self.write_final_artifacts(&run, false, true, "canceled")
            .await;
        if let Some((status, at)) = cleanup_worktree(&self.db, &run, false).await {
            let id = run_id.to_string();
            let _ = self
                .db
                .tx(move |c| {
                    let mut row = db::runs::require(c, &id)?;
                    row.worktree_cleanup_status = Some(status);
                    row.worktree_cleaned_at = at;
                    db::runs::save(c, &row)
                })
                .await;
        }
        self.hub.notify(run_id);
    }

    /// `review-diff.json`: the completed run's diff as it ended, so that the review API's
    /// diff does not change after merge, scrap or reset. Skipped above 50 MiB; a failure is
    /// logged (the live diff remains).
    async fn write_diff_snapshot(&self, run: &RunRow) {
        let r = if run.workspace_source == WorkspaceSource::Git.as_str() {
            let (head, bundle) = match git_run_head(&self.db, &self.store, run).await {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(run_id = %run.id, error = %e, "cannot compute the diff snapshot");
                    return;
                }
            };
            let (mirrors, base_ref) = (self.mirrors.clone(), git_base_ref(run));
            tokio::task::spawn_blocking(move || {
                mirrors
                    .import_run(&head, bundle.as_deref())
                    .and_then(|()| mirrors.run_diff(&head, &base_ref))
                    .map_err(|e| e.to_string())
                    .and_then(|snap| serde_json::to_vec(&snap).map_err(|e| e.to_string()))
            })
            .await
        } else {
            let Some(w) = run.worktree() else { return };
            let root = run.workspace_root.clone();
            tokio::task::spawn_blocking(move || {
                let snap = crate::workspace::run_diff(std::path::Path::new(&root), &w)
                    .map_err(|e| e.to_string())?;
                serde_json::to_vec(&snap).map_err(|e| e.to_string())
            })
            .await
        };
        match r {
            Ok(Ok(bytes)) if bytes.len() <= REVIEW_DIFF_MAX_BYTES => {
                self.store_artifact(&run.id, None, REVIEW_DIFF_NAME, bytes)
                    .await
            }
            Ok(Ok(bytes)) => {
                tracing::warn!(run_id = %run.id, size = bytes.len(), "diff snapshot too large, not kept")
            }
            other => {
                tracing::warn!(run_id = %run.id, result = ?other.map(|r| r.err()), "cannot compute the diff snapshot")
            }
        }
    }

    /// Stores an artifact the controller itself produces (final artifacts, rewritten
    /// prompts), with its row and event.
    pub async fn store_artifact(
        &self,
        run_id: &str,
        step_id: Option<&str>,
        name: &str,
        bytes: Vec<u8>,
    ) {
        let bytes = bytes::Bytes::from(bytes);
        let copy = bytes.clone();
        let stored = match self.store.put(run_id, name, bytes).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(run_id, name, error = %e, "cannot store artifact");
                return;
            }
        };
        let row = ArtifactRow {
            id: new_id(),
            run_id: run_id.to_string(),
            step_id: step_id.map(str::to_string),
            name: name.to_string(),
            kind: artifact_kind(name).to_string(),
            size: stored.size as i64,
            sha256: stored.sha256.clone(),
            store: self.store.kind().as_str().to_string(),
            object_key: stored.key.clone(),
            created_at: now_ms(),
        };
        let r = self
            .db
            .tx(move |c| {
                db::artifacts::upsert(c, &row)?;
                let p = ev::artifact_stored(
                    row.step_id.as_deref(),
                    &row.name,
                    row.size as u64,
                    &row.sha256,
                );
                db::events::append(
                    c,
                    Some(&row.run_id),
                    row.step_id.as_deref(),
                    ev::ARTIFACT_STORED,
                    &p,
                    row.created_at,
                )?;
                Ok::<_, DbError>(())
            })
            .await;
        if let Err(e) = r {
            tracing::error!(run_id, name, error = %e, "cannot record artifact");
        }
        copy_to_run_logs(&self.db, &self.run_logs, run_id, name, copy).await;
    }

    async fn write_final_artifacts(
        &self,
        run: &RunRow,
        completed: bool,
        canceled: bool,
        reason: &str,
    ) {
        let id = run.id.clone();
        let Ok((steps, events)) = self
            .db
            .run(move |c| {
                Ok::<_, DbError>((db::steps::for_run(c, &id)?, db::events::for_run(c, &id)?))
            })
            .await
        else {
            return;
        };
        let config = run.config();
        let plan_text = run
            .plan_path
            .as_deref()
            .filter(|_| run.workspace_source == "shared_fs")
            .map(|_| run.paths())
            .and_then(|p| std::fs::read_to_string(p.plan?).ok());
        let facts = RunFacts {
            run_id: run.id.clone(),
            started_at: run.started_at,
            ended_at: now_ms(),
            model: config.model.clone(),
            completion_mode: config.completion_mode.as_str().into(),
            exit_reason: report::exit_reason(completed, canceled, reason).into(),
            message: reason.to_string(),
            steps: steps.iter().map(step_facts).collect(),
            rewrites: events
                .iter()
                .filter(|e| e.event_type == ev::WATCHDOG_REWRITE)
                .map(|e| (e.payload_json.clone(), e.created_at))
                .collect(),
            tasks: plan_text.map(|t| {
                let pending = crate::domain::plan::count_pending(&t);
                let done = t
                    .lines()
                    .filter(|l| l.trim_start().starts_with("- [x]"))
                    .count();
                (done, done + pending)
            }),
        };
        self.publish_final_bundle(run).await;
        self.store_artifact(
            &run.id,
            None,
            "report.tsv",
            report::report_tsv(&facts).into_bytes(),
        )
        .await;
        if config.summary_json {
            self.store_artifact(
                &run.id,
                None,
                "summary.json",
                report::summary_json(&facts).into_bytes(),
            )
            .await;
        }
    }

    /// A git run's recorded checkpoint becomes `run.bundle`: the run branch as it ended.
    async fn publish_final_bundle(&self, run: &RunRow) {
        let id = run.id.clone();
        let found = self
            .db
            .run(move |c| {
                let state = db::runs::state(c, &id)?;
                match state.checkpoint_name {
                    Some(name) => db::artifacts::get(c, &id, &name),
                    None => Ok(None),
                }
            })
            .await;
        let Ok(Some(art)) = found else { return };
        match self.store.get(&art.object_key).await {
            Ok(bytes) => {
                self.store_artifact(
                    &run.id,
                    art.step_id.as_deref(),
                    FINAL_BUNDLE,
                    bytes.to_vec(),
                )
                .await
            }
            Err(e) => {
                tracing::error!(run_id = %run.id, error = %e, "cannot read the final checkpoint")
            }
        }
    }
}

fn step_facts(s: &StepRow) -> StepFacts {
    StepFacts {
        phase: s.phase.clone(),
        attempt: s.attempt,
        status: s.status.clone(),
        started_at: s.started_at,
        ended_at: s.ended_at,
        exit_code: s.exit_code,
        output_path: s.output_path.clone(),
        output_tail: s.output_tail.clone(),
        completion_detected: s.completion_detected.unwrap_or(false),
    }
}
