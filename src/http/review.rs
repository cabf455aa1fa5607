//! The review workflow (docs/api.md "Review"): `GET /runs/{id}/diff`, `POST /runs/{id}/scrap`,
//! `/merge` and `/create-pr`, with the existing daemon's shapes and review-status transitions.
//! Where it is wrong, loopd is right: an empty body is the defaults (its dashboard sends
//! none), a merge conflict is a 409 that changes nothing, scrap removes the worktree before
//! the branch (and may be repeated), and merge removes the worktree too. Git runs, which have
//! no worktree on the controller, are reviewed on its mirror (`review_git.rs`). Git work runs
//! on the blocking pool; the run row is updated in one transaction after it.

use super::error::ApiError;
use super::extract::Id;
use super::review_git::{self as git, is_git};
use super::review_tools::{blocking, gh_pr_create};
use super::state::AppState;
use crate::actors::scheduler::{Control, ControlRun, SchedError};
use crate::api::{
    CreatePrRequest, CreatePrResponse, MergeRequest, MergeResponse, RunDiffSnapshot, RunWorktree,
};
use crate::db::models::RunRow;
use crate::db::{self, DbError};
use crate::domain::time::now_ms;
use crate::domain::{MergeStrategy, ReviewStatus, RunStatus};
use crate::workspace::{self as ws, WorkspaceError};
use actix_web::http::StatusCode;
use actix_web::{mime, web, HttpMessage, HttpRequest, HttpResponse};
use serde::de::DeserializeOwned;
use std::path::PathBuf;
use std::time::Duration;

/// The run, or 404.
pub(super) async fn load_run(st: &AppState, id: &str) -> Result<RunRow, ApiError> {
    let id = id.to_string();
    st.db
        .run(move |c| db::runs::get(c, &id))
        .await?
        .ok_or_else(|| ApiError::not_found("run"))
}

/// The run's worktree record, or 400.
fn worktree_of(run: &RunRow) -> Result<RunWorktree, ApiError> {
    run.worktree()
        .ok_or_else(|| ApiError::bad_request("no_worktree", "run has no worktree info"))
}

/// Refuses a review action on a run in the wrong status.
fn require_status(run: &RunRow, allowed: &[RunStatus], action: &str) -> Result<(), ApiError> {
    if run.status_in(allowed) {
        return Ok(());
    }
    Err(ApiError::conflict(
        "invalid_transition",
        format!("run must be {action} (status: {})", run.status),
    ))
}

/// A JSON body that may be absent: an empty body is `T::default()`; anything else must be
/// JSON (415 for another content type, 400 when it does not parse, 413 above the cap).
pub(super) fn optional_json<T: DeserializeOwned + Default>(
    st: &AppState,
    req: &HttpRequest,
    body: &[u8],
) -> Result<T, ApiError> {
    if body.len() > st.limits.json_body_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "request body is too large",
        ));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let json = req
        .mime_type()
        .ok()
        .flatten()
        .is_some_and(|m| m.subtype() == mime::JSON || m.suffix() == Some(mime::JSON));
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected Content-Type: application/json (or no body)",
        ));
    }
    let bad = |e: String| ApiError::bad_request("invalid_json", format!("invalid JSON body: {e}"));
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    if !value.is_object() {
        return Err(bad("expected a JSON object".into()));
    }
    serde_json::from_value(value).map_err(|e| bad(e.to_string()))
}

/// The stored `review-diff.json` of a run, if any parses.
async fn snapshot(st: &AppState, run_id: &str) -> Result<Option<RunDiffSnapshot>, ApiError> {
    let id = run_id.to_string();
    let rows = st.db.run(move |c| db::artifacts::for_run(c, &id)).await?;
    for row in rows.iter().filter(|r| r.kind == "review_diff") {
        let Ok(bytes) = st.store.get(&row.object_key).await else {
            continue;
        };
        if let Ok(s) = serde_json::from_slice::<RunDiffSnapshot>(&bytes) {
            return Ok(Some(s));
        }
    }
    Ok(None)
}

/// `GET /runs/{id}/diff`: the snapshot taken at completion when there is one (so merge, scrap
/// and reset do not change it), else the live diff of the run's branch.
pub async fn diff(st: web::Data<AppState>, id: Id) -> Result<HttpResponse, ApiError> {
    let run = load_run(&st, &id.0).await?;
    if let Some(s) = snapshot(&st, &run.id).await? {
        return Ok(HttpResponse::Ok().json(s.diff));
    }
    if is_git(&run) {
        return Ok(HttpResponse::Ok().json(git::diff(&st, &run).await?));
    }
    let wt = worktree_of(&run)?;
    let root = PathBuf::from(&run.workspace_root);
    let live = blocking(move || ws::run_diff(&root, &wt)).await?;
    Ok(HttpResponse::Ok().json(live.diff))
}

/// Writes the review fields of run `id` as one action: `review_status`, `review_action_at`,
/// `pr_url` and `merge_commit` together (NULL where not this action's), plus the worktree
/// cleanup when the action removed it.
async fn record(
    st: &AppState,
    id: &str,
    status: ReviewStatus,
    pr_url: Option<String>,
    merge_commit: Option<String>,
    removed_worktree: bool,
    pushed: Option<(String, String)>,
) -> Result<(), ApiError> {
    let run_id = id.to_string();
    st.db
        .tx(move |c| {
            let mut row = db::runs::lock(c, &run_id)?;
            let now = now_ms();
            row.review_status = status.as_str().to_string();
            row.review_action_at = Some(now);
            row.pr_url = pr_url;
            row.merge_commit = merge_commit;
            if removed_worktree {
                row.worktree_cleanup_status = Some("cleaned".into());
                row.worktree_cleaned_at = Some(now);
            }
            if let Some((branch, commit)) = pushed {
                row.pushed_branch = Some(branch);
                row.pushed_commit = Some(commit);
            }
            row.updated_at = now;
            db::runs::save(c, &row)?;
            Ok::<_, DbError>(())
        })
        .await?;
    st.hub.notify(id);
    Ok(())
}

/// `POST /runs/{id}/scrap`: removes the worktree and deletes the run branch. COMPLETED or
/// FAILED runs only; repeating it is harmless.
pub async fn scrap(st: web::Data<AppState>, id: Id) -> Result<HttpResponse, ApiError> {
    let run = load_run(&st, &id.0).await?;
    require_status(
        &run,
        &[RunStatus::Completed, RunStatus::Failed],
        "completed or failed to scrap",
    )?;
    if is_git(&run) {
        git::scrap(&st, &run).await?;
        record(
            &st,
            &run.id,
            ReviewStatus::Scrapped,
            None,
            None,
            false,
            None,
        )
        .await?;
        return Ok(HttpResponse::NoContent().finish());
    }
    let wt = worktree_of(&run)?;
    let root = PathBuf::from(&run.workspace_root);
    blocking(move || {
        ws::remove_worktree(&root, &wt)?;
        ws::delete_branch(&root, &wt.run_branch)
    })
    .await?;
    record(&st, &run.id, ReviewStatus::Scrapped, None, None, true, None).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The strategy a merge request names: `squash` (also when absent) or `merge`.
fn strategy_of(req: &MergeRequest) -> Result<MergeStrategy, ApiError> {
    match req.strategy.as_deref().map(str::trim) {
        None | Some("") | Some("squash") => Ok(MergeStrategy::Squash),
        Some("merge") => Ok(MergeStrategy::Merge),
        Some(other) => Err(ApiError::bad_request(
            "invalid_request",
            format!("invalid strategy {other:?}: use squash or merge"),
        )),
    }
}

/// The branch a review merges into: the merge target, else the base branch.
fn target_of(wt: &RunWorktree) -> String {
    wt.merge_target_branch
        .clone()
        .filter(|t| !t.trim().is_empty())
        .unwrap_or_else(|| wt.base_branch.clone())
}

/// `POST /runs/{id}/merge {strategy?}`: merges the run branch into its target in memory (the
/// primary checkout keeps its branch), then removes the worktree. A conflict is a 409 and
/// changes nothing.
pub async fn merge(
    st: web::Data<AppState>,
    id: Id,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let m: MergeRequest = optional_json(&st, &req, &body)?;
    let strategy = strategy_of(&m)?;
    let run = load_run(&st, &id.0).await?;
    require_status(&run, &[RunStatus::Completed], "completed to merge")?;
    if is_git(&run) {
        let sha = git::merge(&st, &run, strategy).await?;
        let merged = Some(sha.clone());
        record(
            &st,
            &run.id,
            ReviewStatus::Merged,
            None,
            merged,
            false,
            None,
        )
        .await?;
        return Ok(HttpResponse::Ok().json(MergeResponse { commit: sha }));
    }
    let wt = worktree_of(&run)?;
    let root = PathBuf::from(&run.workspace_root);
    let commit = blocking(move || {
        let target = RunWorktree {
            merge_target_branch: Some(target_of(&wt)),
            merge_strategy: strategy,
            ..wt.clone()
        };
        let sha = ws::merge_run_branch(&root, &target)?.unwrap_or_default();
        if let Err(e) = ws::remove_worktree(&root, &wt) {
            tracing::warn!(error = %e, "merged, but cannot remove the worktree");
            return Ok((sha, false));
        }
        Ok((sha, true))
    })
    .await?;
    let (sha, removed) = commit;
    record(
        &st,
        &run.id,
        ReviewStatus::Merged,
        None,
        Some(sha.clone()),
        removed,
        None,
    )
    .await?;
    Ok(HttpResponse::Ok().json(MergeResponse { commit: sha }))
}

/// `POST /runs/{id}/create-pr {title?, body?}`: `gh pr create --head <run branch> --base
/// <target>` in the workspace. 503 when `gh` is not installed.
pub async fn create_pr(
    st: web::Data<AppState>,
    id: Id,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let p: CreatePrRequest = optional_json(&st, &req, &body)?;
    let run = load_run(&st, &id.0).await?;
    require_status(&run, &[RunStatus::Completed], "completed to create PR")?;
    let title = p.title.unwrap_or_else(|| run.name.clone());
    let text = p
        .body
        .unwrap_or_else(|| format!("Created by loopd run {}", run.id));
    if is_git(&run) {
        let pr = git::create_pr(&st, &run, &title, &text).await?;
        let (url, pushed) = (pr.url.clone(), Some((pr.branch, pr.commit)));
        let pr_url = Some(url.clone());
        record(
            &st,
            &run.id,
            ReviewStatus::PrCreated,
            pr_url,
            None,
            false,
            pushed,
        )
        .await?;
        return Ok(HttpResponse::Ok().json(CreatePrResponse { url }));
    }
    let wt = worktree_of(&run)?;
    // gh finds the repository from the workspace's own remotes (and its `gh repo set-default`).
    let url = gh_pr_create(
        &PathBuf::from(&run.workspace_root),
        None,
        &wt.run_branch,
        &target_of(&wt),
        &title,
        &text,
    )
    .await?;
    record(
        &st,
        &run.id,
        ReviewStatus::PrCreated,
        Some(url.clone()),
        None,
        false,
        None,
    )
    .await?;
    Ok(HttpResponse::Ok().json(CreatePrResponse { url }))
}

/// `POST /runs/{id}/reset`: cancels the run if it is still going, then removes its worktree and
/// deletes its branch (both best effort) and records the cleanup as `reset`. Never refused;
/// the run's status and review fields are kept.
pub async fn reset(st: web::Data<AppState>, id: Id) -> Result<HttpResponse, ApiError> {
    let run = load_run(&st, &id.0).await?;
    if run.status_in(&[RunStatus::Pending, RunStatus::Running, RunStatus::Paused]) {
        let cancel = ControlRun {
            run_id: run.id.clone(),
            verb: Control::Cancel,
        };
        match st.scheduler.send(cancel).await? {
            Ok(()) | Err(SchedError::InvalidTransition(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(wt) = run.worktree() {
        let root = PathBuf::from(&run.workspace_root);
        let run_id = run.id.clone();
        let branch = wt.run_branch.clone();
        let root2 = root.clone();
        let removed = remove_settling(move || ws::remove_worktree(&root, &wt)).await?;
        let deleted = tokio::task::spawn_blocking(move || ws::delete_branch(&root2, &branch))
            .await
            .map_err(ApiError::internal)?;
        let done = (removed.err(), deleted.err());
        if let (Some(e), _) | (_, Some(e)) = &done {
            tracing::warn!(run_id = %run_id, error = %e, "reset: cleanup incomplete");
        }
    }
    let run_id = run.id.clone();
    st.db
        .tx(move |c| {
            let mut row = db::runs::lock(c, &run_id)?;
            row.worktree_cleanup_status = Some("reset".into());
            row.worktree_cleaned_at = None;
            row.updated_at = now_ms();
            db::runs::save(c, &row)?;
            Ok::<_, DbError>(())
        })
        .await?;
    st.hub.notify(&run.id);
    Ok(HttpResponse::NoContent().finish())
}

/// Runs a worktree removal until it succeeds or fails for another reason than the directory
/// changing under it: a just-cancelled step's processes, and the cancelled run's own cleanup,
/// may still be at work there for a moment. The last outcome.
pub(super) async fn remove_settling<F>(f: F) -> Result<Result<(), WorkspaceError>, ApiError>
where
    F: Fn() -> Result<(), WorkspaceError> + Send + Sync + Clone + 'static,
{
    use backon::{BackoffBuilder, ConstantBuilder};
    let attempt = || {
        let f = f.clone();
        async move {
            match tokio::task::spawn_blocking(f).await {
                Ok(r) => Ok(r),
                Err(e) => Err(ApiError::internal(e)),
            }
        }
    };
    let pauses = ConstantBuilder::default()
        .with_delay(Duration::from_millis(200))
        .with_max_times(15);
    let unsettled = |r: &Result<(), WorkspaceError>| matches!(r, Err(WorkspaceError::Io { .. }));
    let mut last = attempt().await?;
    let mut delays = pauses.build();
    while unsettled(&last) {
        let Some(pause) = delays.next() else { break };
        tokio::time::sleep(pause).await;
        last = attempt().await?;
    }
    Ok(last)
}
