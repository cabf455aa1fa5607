//! Small git2 helpers shared by the files of `workspace`: opening a repository, looking up
//! branches, the commit signature and the clean-tree check. Private to `workspace`.

use super::error::{Context, WorkspaceError};
use super::Result;
use git2::{BranchType, Commit, Repository, Signature, StatusOptions};
use std::path::Path;

/// Opens the repository (or worktree) at exactly `path`.
pub(crate) fn open(path: &Path) -> Result<Repository> {
    Repository::open(path).map_err(|source| WorkspaceError::Open {
        path: path.to_path_buf(),
        source,
    })
}

/// A printable name for a repository in messages: its work dir, or its git dir when bare.
pub(crate) fn place(repo: &Repository) -> String {
    repo.workdir()
        .unwrap_or_else(|| repo.path())
        .display()
        .to_string()
}

/// Whether the local branch `name` exists.
pub(crate) fn branch_exists(repo: &Repository, name: &str) -> bool {
    repo.find_branch(name, BranchType::Local).is_ok()
}

/// The commit the local branch `name` points at.
pub(crate) fn branch_commit<'r>(repo: &'r Repository, name: &str) -> Result<Commit<'r>> {
    let not_found = |_| WorkspaceError::NotFound {
        what: "branch",
        name: name.to_string(),
        place: place(repo),
    };
    let branch = repo
        .find_branch(name, BranchType::Local)
        .map_err(not_found)?;
    branch
        .get()
        .peel_to_commit()
        .context(|| format!("branch {name} does not point at a commit"))
}

/// The branch HEAD points at (also when it is unborn), or `None` when HEAD is detached.
pub(crate) fn current_branch(repo: &Repository) -> Result<Option<String>> {
    let head = repo
        .find_reference("HEAD")
        .context(|| format!("cannot read HEAD of {}", place(repo)))?;
    Ok(head
        .symbolic_target()
        .ok()
        .flatten()
        .and_then(|target| target.strip_prefix("refs/heads/"))
        .map(str::to_string))
}

/// The identity for commits loopd makes: the repository's configured user, else
/// `loopd <loopd@localhost>`.
pub(crate) fn signature(repo: &Repository) -> Result<Signature<'static>> {
    match repo.signature() {
        Ok(signature) => Ok(signature),
        Err(_) => Signature::now("loopd", "loopd@localhost").context(|| "bad signature".into()),
    }
}

/// Whether the working tree has no changes, untracked files included (ignored ones are not).
pub(crate) fn is_clean(repo: &Repository) -> Result<bool> {
    let mut options = StatusOptions::new();
    options
        .include_untracked(true)
        .recurse_untracked_dirs(true)
        .include_ignored(false)
        .exclude_submodules(true);
    let statuses = repo
        .statuses(Some(&mut options))
        .context(|| format!("cannot read the status of {}", place(repo)))?;
    Ok(statuses.is_empty())
}
