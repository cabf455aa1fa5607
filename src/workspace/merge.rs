//! Merging a run branch into its merge target (REFERENCE §5.3 "Inline merge"), done in memory
//! so that the primary checkout needs not be clean and keeps its checked-out branch. Called by
//! the run executor on completion and by the review API's merge.

use super::error::{Context, WorkspaceError};
use super::{repo, Result};
use crate::api::RunWorktree;
use crate::domain::MergeStrategy;
use git2::build::CheckoutBuilder;
use git2::{Commit, Oid, Repository};
use std::path::Path;

/// Merges `wt.run_branch` into `wt.merge_target_branch` (created from `wt.base_branch` when
/// missing) and returns the target's new commit sha; `None` when the run has no merge target
/// or strategy `none`.
///
/// `merge` fast-forwards when the target is an ancestor of the run branch, else writes a merge
/// commit with both parents. `squash` writes one commit "Squash merge from <run_branch>" on the
/// target with the merged tree, or none when the tree would not change. The target ref is
/// updated without touching any checkout, unless the target is checked out (in the primary
/// checkout or a linked worktree): a clean checkout is updated to the new commit, a dirty one
/// makes the merge fail. A conflict fails with the conflicting paths and changes nothing.
pub fn merge_run_branch(workspace_root: &Path, wt: &RunWorktree) -> Result<Option<String>> {
    let target = match (&wt.merge_target_branch, wt.merge_strategy) {
        (Some(target), MergeStrategy::Merge | MergeStrategy::Squash) => target.as_str(),
        _ => return Ok(None),
    };
    let repository = repo::open(workspace_root)?;
    let holder = checkout_holder(&repository, target)?;
    if let Some(holder) = &holder {
        if !repo::is_clean(holder)? {
            return Err(WorkspaceError::DirtyCheckout {
                branch: target.to_string(),
                path: holder.workdir().unwrap_or(holder.path()).to_path_buf(),
            });
        }
    }
    let run = repo::branch_commit(&repository, &wt.run_branch)?;
    let existing = repo::branch_exists(&repository, target);
    let current = match existing {
        true => repo::branch_commit(&repository, target)?,
        false => repo::branch_commit(&repository, &wt.base_branch)?,
    };
    let new = match wt.merge_strategy {
        MergeStrategy::Squash => squash(&repository, &current, &run, &wt.run_branch, target)?,
        _ => merge(&repository, &current, &run, &wt.run_branch, target)?,
    };
    if existing && new == current.id() {
        return Ok(Some(new.to_string()));
    }
    let refname = format!("refs/heads/{target}");
    let message = format!("loopd: merge {} into {target}", wt.run_branch);
    let updated = match existing {
        true => repository.reference_matching(&refname, new, true, current.id(), &message),
        false => repository.reference(&refname, new, false, &message),
    };
    updated.context(|| format!("cannot update branch {target}"))?;
    if let Some(holder) = holder {
        holder
            .checkout_head(Some(CheckoutBuilder::new().force()))
            .context(|| format!("cannot check out the merged {target}"))?;
    }
    Ok(Some(new.to_string()))
}

/// The commit that merging `run` into `current` (the target branch `target`'s tip) with
/// `strategy` makes, written to the object database of `repository` without moving any ref:
/// `current` itself when there is nothing to merge, `run` for a fast-forward. A conflict fails
/// with the conflicting paths. Used for git runs, whose target is pushed to the remote.
pub(crate) fn merged_commit(
    repository: &Repository,
    current: &Commit,
    run: &Commit,
    (run_branch, target): (&str, &str),
    strategy: MergeStrategy,
) -> Result<Oid> {
    match strategy {
        MergeStrategy::Squash => squash(repository, current, run, run_branch, target),
        _ => merge(repository, current, run, run_branch, target),
    }
}

fn merge(
    repository: &Repository,
    current: &Commit,
    run: &Commit,
    run_branch: &str,
    target: &str,
) -> Result<Oid> {
    if contains(repository, current, run)? {
        return Ok(current.id());
    }
    if contains(repository, run, current)? {
        return Ok(run.id());
    }
    let tree_id = merged_tree(repository, current, run, run_branch, target)?;
    let message = format!("Merge branch '{run_branch}' into {target}");
    commit(repository, tree_id, &message, &[current, run])
}

fn squash(
    repository: &Repository,
    current: &Commit,
    run: &Commit,
    run_branch: &str,
    target: &str,
) -> Result<Oid> {
    if contains(repository, current, run)? {
        return Ok(current.id());
    }
    let tree_id = merged_tree(repository, current, run, run_branch, target)?;
    if tree_id == current.tree_id() {
        return Ok(current.id());
    }
    let message = format!("Squash merge from {run_branch}");
    commit(repository, tree_id, &message, &[current])
}

/// Whether `commit` is `ancestor` or has it in its history.
fn contains(repository: &Repository, commit: &Commit, ancestor: &Commit) -> Result<bool> {
    if commit.id() == ancestor.id() {
        return Ok(true);
    }
    repository
        .graph_descendant_of(commit.id(), ancestor.id())
        .context(|| "cannot compare commit histories".into())
}

/// The tree of merging `run` into `current`, written to the object database.
fn merged_tree(
    repository: &Repository,
    current: &Commit,
    run: &Commit,
    run_branch: &str,
    target: &str,
) -> Result<Oid> {
    let mut index = repository
        .merge_commits(current, run, None)
        .context(|| format!("cannot merge {run_branch} into {target}"))?;
    if index.has_conflicts() {
        let conflicts = index
            .conflicts()
            .context(|| "cannot list merge conflicts".into())?;
        let mut paths: Vec<String> = conflicts
            .filter_map(|c| c.ok())
            .filter_map(|c| c.our.or(c.their).or(c.ancestor))
            .map(|entry| String::from_utf8_lossy(&entry.path).into_owned())
            .collect();
        paths.dedup();
        return Err(WorkspaceError::Conflict {
            run_branch: run_branch.to_string(),
            target: target.to_string(),
            paths,
        });
    }
    index
        .write_tree_to(repository)
        .context(|| format!("cannot write the merged tree of {run_branch}"))
}

fn commit(
    repository: &Repository,
    tree_id: Oid,
    message: &str,
    parents: &[&Commit],
) -> Result<Oid> {
    let tree = repository
        .find_tree(tree_id)
        .context(|| "cannot read the merged tree".into())?;
    let signature = repo::signature(repository)?;
    repository
        .commit(None, &signature, &signature, message, &tree, parents)
        .context(|| format!("cannot write commit \"{message}\""))
}

/// The checkout (primary or linked worktree) that has `branch` checked out, if any.
fn checkout_holder(repository: &Repository, branch: &str) -> Result<Option<Repository>> {
    if !repository.is_bare() && repo::current_branch(repository)?.as_deref() == Some(branch) {
        return repo::open(repository.workdir().unwrap_or(repository.path())).map(Some);
    }
    let names = repository
        .worktrees()
        .context(|| format!("cannot list worktrees of {}", repo::place(repository)))?;
    for name in names.iter().filter_map(|n| n.ok().flatten()) {
        let Ok(worktree) = repository.find_worktree(name) else {
            continue;
        };
        if worktree.validate().is_err() {
            continue;
        }
        let Ok(linked) = Repository::open_from_worktree(&worktree) else {
            continue;
        };
        if repo::current_branch(&linked)?.as_deref() == Some(branch) {
            return Ok(Some(linked));
        }
    }
    Ok(None)
}
