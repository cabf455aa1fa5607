//! The git side of finishing a run: worktree cleanup (kept for a pending review, else removed
//! as the run's config says), the optional merge into `merge_target_branch`, recorded as a
//! merge step, and the push of a completed git run's branch to its remote
//! (`git.push_run_branch`). Called by the `Finisher` (`finish.rs`) only.

use super::error::SchedError;
use crate::artifacts::ArtifactStore;
use crate::db::models::{RunRow, StepRow};
use crate::db::{self, Db, DbError};
use crate::domain::events as ev;
use crate::domain::time::now_ms;
use crate::domain::{MergeStrategy, StepPhase, StepStatus};
use crate::workspace::worktree as wt;
use crate::workspace::{GitRunHead, Mirrors};
use bytes::Bytes;
use std::path::Path;
use std::sync::Arc;

/// Cleanup policy: a completed run awaiting review keeps its worktree (`deferred`).
pub(super) async fn cleanup_worktree(
    db: &Db,
    run: &RunRow,
    completed: bool,
) -> Option<(String, Option<i64>)> {
    let w = run.worktree()?;
    if completed && run.review_status == "pending" {
        return Some(("deferred".into(), None));
    }
    if !run.config().worktree_cleanup {
        return Some(("skipped".into(), None));
    }
    let (root, w2) = (run.workspace_root.clone(), w.clone());
    let r = tokio::task::spawn_blocking(move || wt::remove_worktree(Path::new(&root), &w2)).await;
    match r {
        Ok(Ok(())) => {
            let (id, path) = (run.id.clone(), w.worktree_path.clone());
            let _ = db
                .tx(move |c| {
                    let p = ev::worktree(&id, &path, None);
                    db::events::append(c, Some(&id), None, ev::WORKTREE_REMOVED, &p, now_ms())
                })
                .await;
            Some(("cleaned".into(), Some(now_ms())))
        }
        other => {
            tracing::warn!(run_id = %run.id, result = ?other.map(|r| r.err().map(|e| e.to_string())), "worktree cleanup failed");
            Some(("failed".into(), None))
        }
    }
}

pub(super) async fn merge_if_configured(db: &Db, run: &RunRow) -> Result<MergeResult, SchedError> {
    let Some(w) = run.worktree() else {
        return Ok(MergeResult::NotConfigured);
    };
    if w.merge_target_branch.is_none() || w.merge_strategy == MergeStrategy::None {
        return Ok(MergeResult::NotConfigured);
    }
    let step_id = merge_step(db, &run.id).await?;
    let (root, w2) = (run.workspace_root.clone(), w.clone());
    let started = now_ms();
    let r = tokio::task::spawn_blocking(move || {
        crate::workspace::merge_run_branch(Path::new(&root), &w2)
    })
    .await
    .map_err(|e| SchedError::Internal(e.to_string()))?;
    let (ok, result) = match r {
        Ok(sha) => (true, MergeResult::Merged(sha)),
        Err(e) => (false, MergeResult::Failed(e.to_string())),
    };
    let (id, sid) = (run.id.clone(), step_id);
    db.tx(move |c| {
        let mut s = db::steps::get(c, &sid)?.ok_or(DbError::NotFound)?;
        let now = now_ms();
        s.set_status(if ok {
            StepStatus::Succeeded
        } else {
            StepStatus::Failed
        });
        s.exit_code = Some(if ok { 0 } else { 1 });
        s.ended_at = Some(now);
        db::steps::save(c, &s)?;
        let p = ev::step_finished(
            &sid,
            if ok { 0 } else { 1 },
            (now - started).max(0) as u64,
            "",
        );
        db::events::append(c, Some(&id), Some(&sid), ev::STEP_FINISHED, &p, now)?;
        Ok::<_, SchedError>(())
    })
    .await?;
    Ok(result)
}

/// The run's merge step (created IN_PROGRESS, or the one a crash left behind).
async fn merge_step(db: &Db, run_id: &str) -> Result<String, SchedError> {
    let id = run_id.to_string();
    db.tx(move |c| {
        let steps = db::steps::for_run(c, &id)?;
        if let Some(s) = steps.iter().find(|s| {
            s.phase == StepPhase::Merge.as_str() && s.step_status() == Some(StepStatus::InProgress)
        }) {
            return Ok(s.id.clone());
        }
        let now = now_ms();
        let step = merge_step_row(&id, steps.last().map(|s| s.seq + 1).unwrap_or(1), now);
        db::steps::insert(c, &step)?;
        let p = ev::step_started(&step.id, "merge", 1, "controller", 0);
        db::events::append(c, Some(&id), Some(&step.id), ev::STEP_STARTED, &p, now)?;
        Ok::<_, SchedError>(step.id)
    })
    .await
}

/// Pushes a completed git run's branch (its final checkpoint, else the commit it started
/// from) to the run's remote, when `git.push_run_branch` says so. Safe to call again: a
/// branch already at the commit is left alone.
pub(super) async fn push_if_configured(
    db: &Db,
    store: &ArtifactStore,
    mirrors: &Arc<Mirrors>,
    run: &RunRow,
) -> PushResult {
    let url = match &run.repo_url {
        Some(url) if run.workspace_source == "git" && mirrors.remotes().push_run_branch() => {
            url.clone()
        }
        _ => return PushResult::NotConfigured,
    };
    let branch = run.git_run_branch(&run.config());
    match push_branch(db, store, mirrors, run, &url, &branch).await {
        Ok(commit) => {
            tracing::info!(run_id = %run.id, branch = %branch, commit = %commit, "run branch pushed");
            PushResult::Pushed { branch, commit }
        }
        Err(e) => {
            tracing::warn!(run_id = %run.id, error = %e, "cannot push the run branch");
            PushResult::Failed(e)
        }
    }
}

async fn push_branch(
    db: &Db,
    store: &ArtifactStore,
    mirrors: &Arc<Mirrors>,
    run: &RunRow,
    url: &str,
    branch: &str,
) -> Result<String, String> {
    let (head, bundle) = git_run_head(db, store, run).await?;
    let mirrors = mirrors.clone();
    let (url, branch) = (url.to_string(), branch.to_string());
    let commit = head.head.clone();
    tokio::task::spawn_blocking(move || {
        if bundle.is_some() {
            mirrors
                .import_run(&head, bundle.as_deref())
                .map_err(|e| e.to_string())?;
        }
        mirrors
            .push_branch(&url, None, &head.head, &branch)
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| format!("push task failed: {e}"))??;
    Ok(commit)
}

/// A git run as its review and its push see it, with the bytes of its newest checkpoint
/// bundle (none when no step made one yet: its head is then the commit it started from).
pub(crate) async fn git_run_head(
    db: &Db,
    store: &ArtifactStore,
    run: &RunRow,
) -> Result<(GitRunHead, Option<Bytes>), String> {
    let (Some(url), Some(base)) = (&run.repo_url, &run.repo_ref) else {
        return Err("the run has no repository or commit".into());
    };
    let id = run.id.clone();
    let found = db
        .run(move |c| {
            let state = db::runs::state(c, &id)?;
            let art = match &state.checkpoint_name {
                Some(name) => db::artifacts::get(c, &id, name)?,
                None => None,
            };
            Ok::<_, DbError>((state.checkpoint_head, art))
        })
        .await
        .map_err(|e| format!("cannot read the run's checkpoint: {e}"))?;
    let (head, bundle) = match found {
        (Some(head), Some(art)) => {
            let bytes = store
                .get(&art.object_key)
                .await
                .map_err(|e| format!("cannot read the newest checkpoint: {e}"))?;
            (head, Some(bytes))
        }
        _ => (base.clone(), None),
    };
    let head = GitRunHead {
        repo_url: url.clone(),
        run_id: run.id.clone(),
        run_branch: run.git_run_branch(&run.config()),
        base_sha: base.clone(),
        head,
    };
    Ok((head, bundle))
}

/// What a git run's diff shows as its base: the branch it started from (its `base_branch`),
/// else the commit.
pub(crate) fn git_base_ref(run: &RunRow) -> String {
    run.config()
        .base_branch
        .filter(|b| !b.trim().is_empty())
        .or_else(|| run.repo_ref.clone())
        .unwrap_or_default()
}

/// What pushing a completed git run's branch did.
pub(super) enum PushResult {
    NotConfigured,
    Pushed { branch: String, commit: String },
    Failed(String),
}

/// What the optional merge into `merge_target_branch` did.
pub(super) enum MergeResult {
    NotConfigured,
    Merged(Option<String>),
    Failed(String),
}

fn merge_step_row(run_id: &str, seq: i32, now: i64) -> StepRow {
    StepRow {
        is_final: true,
        settled: true,
        started_at: Some(now),
        ..StepRow::new(
            run_id,
            seq,
            StepPhase::Merge.as_str(),
            StepStatus::InProgress.as_str(),
            now,
        )
    }
}
