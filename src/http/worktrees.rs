//! `GET /worktrees?workspace=` and `DELETE /worktrees?workspace=&path=&force=` (docs/review.md
//! "Worktrees"): a workspace's linked worktrees with the runs they belong to and why each is
//! kept, and removing one (its run, if still going, is cancelled first; the branch stays).

use super::error::ApiError;
use super::state::AppState;
use crate::actors::scheduler::{Control, ControlRun, SchedError};
use crate::api::{WorktreeInfo, WorktreesEnvelope};
use crate::db::models::RunRow;
use crate::db::{self, DbError};
use crate::domain::time::{now_ms, rfc3339};
use crate::domain::RunStatus;
use crate::workspace::{self as ws, WorkspaceError};
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The query of both routes.
#[derive(Debug, Deserialize)]
pub struct WorktreesQuery {
    pub workspace: Option<String>,
    pub path: Option<String>,
    pub force: Option<bool>,
}

fn required<'a>(v: &'a Option<String>, name: &str) -> Result<&'a str, ApiError> {
    v.as_deref()
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("invalid_query", format!("{name} is required")))
}

/// The workspace directory, or 404.
fn workspace_dir(p: &str) -> Result<PathBuf, ApiError> {
    let dir = PathBuf::from(p);
    if !dir.is_dir() {
        return Err(ApiError::new(
            actix_web::http::StatusCode::NOT_FOUND,
            "not_found",
            format!("workspace not found: {p}"),
        ));
    }
    Ok(dir)
}

fn canonical(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf())
}

fn git_error(e: WorkspaceError) -> ApiError {
    match e {
        WorkspaceError::Open { .. } => ApiError::bad_request("not_a_repository", e.to_string()),
        WorkspaceError::NotAWorktree { .. } => {
            ApiError::bad_request("not_a_worktree", e.to_string())
        }
        WorkspaceError::DirtyWorktree { .. } => ApiError::conflict("dirty_worktree", e.to_string()),
        WorkspaceError::Io { .. } => ApiError::bad_request("invalid_request", e.to_string()),
        other => ApiError::internal(other),
    }
}

/// Runs whose worktree is at `path` (canonical), newest first.
async fn runs_at(st: &AppState, path: PathBuf) -> Result<Vec<RunRow>, ApiError> {
    let rows = st.db.run(move |c| db::runs::list(c, None, None)).await?;
    Ok(rows
        .into_iter()
        .filter(|r| {
            r.worktree()
                .is_some_and(|w| canonical(Path::new(&w.worktree_path)) == path)
        })
        .collect())
}

/// When the ended run's kept worktree will be removed, if it will.
fn remove_after(run: &RunRow) -> Option<String> {
    let ended = run.status_in(&[RunStatus::Completed, RunStatus::Failed, RunStatus::Canceled]);
    let kept = run
        .worktree_cleanup_status
        .as_deref()
        .is_none_or(|s| db::runs::KEPT_WORKTREE.contains(&s));
    (ended && kept)
        .then(|| run.worktree_remove_after())
        .flatten()
        .map(rfc3339)
}

/// `GET /worktrees?workspace=P`.
pub async fn list(
    st: web::Data<AppState>,
    q: web::Query<WorktreesQuery>,
) -> Result<HttpResponse, ApiError> {
    let p = required(&q.workspace, "workspace")?.to_string();
    let dir = workspace_dir(&p)?;
    let listed = tokio::task::spawn_blocking(move || ws::list_worktrees(&dir))
        .await
        .map_err(ApiError::internal)?
        .map_err(git_error)?;
    let rows = st.db.run(move |c| db::runs::list(c, None, None)).await?;
    let mut worktrees = Vec::new();
    for w in listed {
        let path = canonical(&w.path);
        let run = rows.iter().find(|r| {
            r.worktree()
                .is_some_and(|t| canonical(Path::new(&t.worktree_path)) == path)
        });
        worktrees.push(WorktreeInfo {
            path: w.path.display().to_string(),
            branch: w.branch,
            commit: w.commit,
            run_id: run.map(|r| r.id.clone()),
            run_status: run.map(|r| r.status.clone()),
            cleanup_status: run.and_then(|r| r.worktree_cleanup_status.clone()),
            remove_after: run.and_then(remove_after),
        });
    }
    Ok(HttpResponse::Ok().json(WorktreesEnvelope {
        workspace: p,
        worktrees,
    }))
}

/// `DELETE /worktrees?workspace=P&path=W&force=false`.
pub async fn remove(
    st: web::Data<AppState>,
    q: web::Query<WorktreesQuery>,
) -> Result<HttpResponse, ApiError> {
    let dir = workspace_dir(required(&q.workspace, "workspace")?)?;
    let path = PathBuf::from(required(&q.path, "path")?);
    let force = q.force.unwrap_or(false);
    let runs = runs_at(&st, canonical(&path)).await?;
    for r in runs
        .iter()
        .filter(|r| r.status_in(&[RunStatus::Pending, RunStatus::Running, RunStatus::Paused]))
    {
        let cancel = ControlRun {
            run_id: r.id.clone(),
            verb: Control::Cancel,
        };
        match st.scheduler.send(cancel).await? {
            Ok(()) | Err(SchedError::InvalidTransition(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let cancelled = runs
        .iter()
        .any(|r| r.status_in(&[RunStatus::Pending, RunStatus::Running, RunStatus::Paused]));
    let gone = path.clone();
    match super::review::remove_settling(move || ws::remove_listed_worktree(&dir, &path, force))
        .await?
    {
        Ok(()) => {}
        // The cancelled run's own cleanup removed it first.
        Err(WorkspaceError::NotAWorktree { .. }) if cancelled && !gone.exists() => {}
        Err(e) => return Err(git_error(e)),
    }
    // The runs whose worktree this was, and that still counted it as there.
    let ids: Vec<String> = runs
        .iter()
        .filter(|r| {
            r.worktree_cleanup_status
                .as_deref()
                .is_none_or(|s| db::runs::KEPT_WORKTREE.contains(&s))
        })
        .map(|r| r.id.clone())
        .collect();
    st.db
        .tx(move |c| {
            let now = now_ms();
            for id in &ids {
                let mut row = db::runs::lock(c, id)?;
                row.worktree_cleanup_status = Some("cleaned".into());
                row.worktree_cleaned_at = Some(now);
                row.updated_at = now;
                db::runs::save(c, &row)?;
            }
            Ok::<_, DbError>(())
        })
        .await?;
    Ok(HttpResponse::NoContent().finish())
}
