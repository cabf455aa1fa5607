//! The review routes for git runs (docs/review.md "Git runs"), which have no worktree on the
//! controller: the run's head is read from its newest checkpoint bundle into the controller's
//! cached mirror, the diff is computed there, a merge is made there and pushed to the target
//! branch of the run's remote, scrap deletes the branch the run pushed, and create-pr pushes
//! the run branch before running `gh`. Remote operations use the `[git]` settings (allow-lists,
//! credentials, timeouts) like the run's own fetches and pushes. Called by `review.rs`.

use super::error::ApiError;
use super::review_tools::{blocking, gh_on_path, gh_pr_create, gh_unavailable};
use super::state::AppState;
use crate::actors::scheduler::{git_base_ref, git_run_head};
use crate::api::RunDiff;
use crate::db::models::RunRow;
use crate::domain::{MergeStrategy, WorkspaceSource};
use crate::workspace::remote::RemoteUrl;
use crate::workspace::GitRunHead;

/// Whether the run works on a clone of a remote (no worktree on this host).
pub(super) fn is_git(run: &RunRow) -> bool {
    run.workspace_source == WorkspaceSource::Git.as_str()
}

/// The run's head, imported into the mirror under the run's own ref.
async fn head_in_mirror(st: &AppState, run: &RunRow) -> Result<GitRunHead, ApiError> {
    let (head, bundle) = git_run_head(&st.db, &st.store, run)
        .await
        .map_err(ApiError::internal)?;
    let (mirrors, h) = (st.mirrors.clone(), head.clone());
    blocking(move || mirrors.import_run(&h, bundle.as_deref())).await?;
    Ok(head)
}

/// The branch a git run merges into and opens its pull request against: its merge target,
/// else the branch it started from; 409 when it started from a tag or commit and names none.
fn target_of(run: &RunRow) -> Result<String, ApiError> {
    let config = run.config();
    config
        .merge_target_branch
        .or(config.base_branch)
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| {
            ApiError::conflict(
                "no_target_branch",
                "the run started from a commit, not a branch, and names no merge_target_branch",
            )
        })
}

/// The live diff of a git run: from the commit it started from to its newest checkpoint.
pub(super) async fn diff(st: &AppState, run: &RunRow) -> Result<RunDiff, ApiError> {
    let head = head_in_mirror(st, run).await?;
    let (mirrors, base_ref) = (st.mirrors.clone(), git_base_ref(run));
    let snap = blocking(move || mirrors.run_diff(&head, &base_ref)).await?;
    Ok(snap.diff)
}

/// Merges the run into its target branch in the mirror and pushes the target to the remote;
/// the target's new commit.
pub(super) async fn merge(
    st: &AppState,
    run: &RunRow,
    strategy: MergeStrategy,
) -> Result<String, ApiError> {
    let target = target_of(run)?;
    let head = head_in_mirror(st, run).await?;
    let mirrors = st.mirrors.clone();
    blocking(move || mirrors.merge_and_push(&head, &target, strategy)).await
}

/// Deletes the branch the run pushed (at completion or for a pull request) on the remote,
/// while it is still at a commit the run made, and the mirror's ref of the run. A run that
/// pushed nothing does not contact the remote.
pub(super) async fn scrap(st: &AppState, run: &RunRow) -> Result<(), ApiError> {
    let (head, _) = git_run_head(&st.db, &st.store, run)
        .await
        .map_err(ApiError::internal)?;
    let pushed = run.pushed_branch.clone();
    let mut ours = vec![head.head.clone()];
    ours.extend(run.pushed_commit.clone());
    let mirrors = st.mirrors.clone();
    blocking(move || {
        if let Some(branch) = pushed {
            let refs: Vec<&str> = ours.iter().map(String::as_str).collect();
            mirrors.delete_remote_branch(&head.repo_url, &branch, &refs)?;
        }
        mirrors.forget_run(&head.repo_url, &head.run_id);
        Ok(())
    })
    .await
}

/// What `create-pr` pushed.
pub(super) struct PrCreated {
    pub url: String,
    pub branch: String,
    pub commit: String,
}

/// Pushes the run branch to the remote, then runs `gh pr create` in the mirror, naming the
/// run's repository (`--repo`, from its URL) rather than letting gh guess it from the
/// mirror's remotes.
pub(super) async fn create_pr(
    st: &AppState,
    run: &RunRow,
    title: &str,
    body: &str,
) -> Result<PrCreated, ApiError> {
    let target = target_of(run)?;
    if !gh_on_path() {
        return Err(gh_unavailable());
    }
    let head = head_in_mirror(st, run).await?;
    let (mirrors, h) = (st.mirrors.clone(), head.clone());
    blocking(move || mirrors.push_branch(&h.repo_url, None, &h.head, &h.run_branch)).await?;
    let dir = st.mirrors.path_of(&head.repo_url);
    let repo = RemoteUrl::parse(&head.repo_url)
        .ok()
        .and_then(|u| u.gh_repo());
    let url = gh_pr_create(
        &dir,
        repo.as_deref(),
        &head.run_branch,
        &target,
        title,
        body,
    )
    .await?;
    Ok(PrCreated {
        url,
        branch: head.run_branch,
        commit: head.head,
    })
}
