//! Run worktrees of shared_fs runs (REFERENCE §5.2–5.3): choosing the base branch, planning the
//! run branch and worktree path, creating (idempotently) and removing the git worktree, and the
//! clean-tree check. Called by the run executor of shared_fs runs.

use super::error::{Context, WorkspaceError};
use super::naming::{expand_path_template, slug};
use super::{repo, Result};
use crate::api::RunWorktree;
use crate::domain::MergeStrategy;
use git2::{Repository, WorktreeAddOptions};
use std::fs;
use std::path::{Path, PathBuf};

/// How many `-N` suffixes the planner tries before giving up.
const MAX_SUFFIX: u32 = 1000;

/// The base branch of a run in `repo`: `configured` when given, else the branch checked out in
/// `repo`, else (detached HEAD) the default branch: `origin/HEAD`'s branch, else `main` if it
/// exists, else `master` if it exists, else `main`.
pub fn detect_base_branch(repo: &Path, configured: Option<&str>) -> Result<String> {
    if let Some(branch) = configured.filter(|b| !b.trim().is_empty()) {
        return Ok(branch.trim().to_string());
    }
    let repository = repo::open(repo)?;
    if let Some(branch) = repo::current_branch(&repository)? {
        return Ok(branch);
    }
    Ok(default_branch(&repository))
}

fn default_branch(repo: &Repository) -> String {
    let origin_head = repo
        .find_reference("refs/remotes/origin/HEAD")
        .ok()
        .and_then(|r| r.symbolic_target().ok().flatten().map(str::to_string));
    if let Some(branch) =
        origin_head.and_then(|t| t.strip_prefix("refs/remotes/origin/").map(str::to_string))
    {
        return branch;
    }
    if !repo::branch_exists(repo, "main") && repo::branch_exists(repo, "master") {
        return "master".into();
    }
    "main".into()
}

/// Plans the worktree of a new run: base branch per [`detect_base_branch`], run branch
/// `<run_branch_prefix><slug(run_name)>` (slug `run` when the name has no ASCII alphanumerics)
/// with `-2`, `-3`, … appended while that branch or its worktree path already exists, path from
/// `path_template`, strategy `none` when there is no merge target, provider `git`.
pub fn plan_worktree(
    workspace_root: &Path,
    run_name: &str,
    base_branch: Option<&str>,
    run_branch_prefix: &str,
    merge_target: Option<&str>,
    merge_strategy: MergeStrategy,
    path_template: &str,
) -> Result<RunWorktree> {
    let base_branch = detect_base_branch(workspace_root, base_branch)?;
    let repository = repo::open(workspace_root)?;
    let mut name_slug = slug(run_name);
    if name_slug.is_empty() {
        name_slug = "run".into();
    }
    let stem = format!("{run_branch_prefix}{name_slug}");
    for n in 1..=MAX_SUFFIX {
        let run_branch = match n {
            1 => stem.clone(),
            n => format!("{stem}-{n}"),
        };
        let path = expand_path_template(path_template, workspace_root, &run_branch);
        if repo::branch_exists(&repository, &run_branch) || path.exists() {
            continue;
        }
        let merge_target_branch = merge_target
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        let merge_strategy = match merge_target_branch {
            Some(_) => merge_strategy,
            None => MergeStrategy::None,
        };
        return Ok(RunWorktree {
            base_branch,
            run_branch,
            merge_target_branch,
            merge_strategy,
            worktree_path: path.display().to_string(),
            provider: "git".into(),
        });
    }
    Err(WorkspaceError::NotFound {
        what: "free run branch name",
        name: format!("{stem}-{MAX_SUFFIX}"),
        place: repo::place(&repository),
    })
}

/// Creates the run's worktree: the run branch from the base branch when it is missing, then a
/// git worktree at `worktree_path` on it (parent directories created). Idempotent: a worktree
/// already on the run branch is reused; a stale directory there on another branch is deleted
/// and recreated. Fails unless the worktree ends up on the run branch.
pub fn create_worktree(workspace_root: &Path, wt: &RunWorktree) -> Result<()> {
    let repository = repo::open(workspace_root)?;
    let path = PathBuf::from(&wt.worktree_path);
    refuse_primary_path(workspace_root, &path)?;
    if !repo::branch_exists(&repository, &wt.run_branch) {
        let base = repo::branch_commit(&repository, &wt.base_branch)?;
        repository
            .branch(&wt.run_branch, &base, false)
            .context(|| format!("cannot create branch {}", wt.run_branch))?;
    }
    if path.exists() {
        if worktree_branch(&repository, &path).as_deref() == Some(wt.run_branch.as_str()) {
            return verify_branch(&path, &wt.run_branch);
        }
        remove_dir(&path)?;
    }
    prune_stale(&repository)?;
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).context(|| format!("cannot create {}", parent.display()))?;
    }
    let name = free_worktree_name(&repository, &path);
    let reference = repository
        .find_reference(&format!("refs/heads/{}", wt.run_branch))
        .context(|| format!("cannot look up branch {}", wt.run_branch))?;
    let mut options = WorktreeAddOptions::new();
    options.reference(Some(&reference));
    repository
        .worktree(&name, &path, Some(&options))
        .context(|| {
            format!(
                "cannot add worktree {} on {}",
                path.display(),
                wt.run_branch
            )
        })?;
    verify_branch(&path, &wt.run_branch)
}

/// Removes the run's worktree directory and its registration in the repository; the run branch
/// is kept. Removing a worktree that is already gone succeeds.
pub fn remove_worktree(workspace_root: &Path, wt: &RunWorktree) -> Result<()> {
    let repository = repo::open(workspace_root)?;
    let path = PathBuf::from(&wt.worktree_path);
    refuse_primary_path(workspace_root, &path)?;
    if path.exists() {
        remove_dir(&path)?;
    }
    prune_stale(&repository)
}

/// Deletes the local branch `name` of the repository at `workspace_root`; true when it
/// existed. Refused (an error) while the branch is checked out somewhere.
pub fn delete_branch(workspace_root: &Path, name: &str) -> Result<bool> {
    let repository = repo::open(workspace_root)?;
    let Ok(mut branch) = repository.find_branch(name, git2::BranchType::Local) else {
        return Ok(false);
    };
    branch
        .delete()
        .context(|| format!("cannot delete branch {name}"))?;
    Ok(true)
}

/// A linked worktree of a repository as `git worktree list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub path: PathBuf,
    /// `None` for a detached HEAD.
    pub branch: Option<String>,
    pub commit: String,
}

/// The linked worktrees of the repository at `workspace_root` (not the primary checkout; not
/// those whose directory is gone), by path.
pub fn list_worktrees(workspace_root: &Path) -> Result<Vec<Listed>> {
    let repository = repo::open(workspace_root)?;
    let names = repository
        .worktrees()
        .context(|| format!("cannot list worktrees of {}", repo::place(&repository)))?;
    let mut out = Vec::new();
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
        let commit = linked
            .head()
            .ok()
            .and_then(|h| h.target())
            .map(|oid| oid.to_string())
            .unwrap_or_default();
        out.push(Listed {
            path: worktree.path().to_path_buf(),
            branch: repo::current_branch(&linked).ok().flatten(),
            commit,
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Removes the linked worktree at `path` of the repository at `workspace_root` (its directory
/// and registration; the branch stays). A worktree with uncommitted changes is removed only
/// with `force`; the primary checkout and other paths are refused.
pub fn remove_listed_worktree(workspace_root: &Path, path: &Path, force: bool) -> Result<()> {
    let repository = repo::open(workspace_root)?;
    let names = repository
        .worktrees()
        .context(|| format!("cannot list worktrees of {}", repo::place(&repository)))?;
    // Registered ones, also half-removed: a removal that was interrupted can be finished.
    let found = names
        .iter()
        .filter_map(|n| n.ok().flatten())
        .filter_map(|n| repository.find_worktree(n).ok())
        .find(|w| same_path(w.path(), path));
    let Some(found) = found else {
        return Err(WorkspaceError::NotAWorktree {
            path: path.to_path_buf(),
            repo: workspace_root.to_path_buf(),
        });
    };
    let at = found.path().to_path_buf();
    refuse_primary_path(workspace_root, &at)?;
    if !force && found.validate().is_ok() && !repo::is_clean(&repo::open(&at)?)? {
        return Err(WorkspaceError::DirtyWorktree { path: at });
    }
    remove_dir(&at)?;
    prune_stale(&repository)
}

/// Whether the working tree at `repo` has no changes (untracked files count, ignored do not).
pub fn is_clean(repo: &Path) -> Result<bool> {
    repo::is_clean(&repo::open(repo)?)
}

/// The branch checked out at `path` when `path` is a worktree of `repository`.
fn worktree_branch(repository: &Repository, path: &Path) -> Option<String> {
    let candidate = Repository::open(path).ok()?;
    if !same_path(candidate.commondir(), repository.commondir()) {
        return None;
    }
    repo::current_branch(&candidate).ok().flatten()
}

fn verify_branch(path: &Path, expected: &str) -> Result<()> {
    let actual = repo::current_branch(&repo::open(path)?)?;
    if actual.as_deref() == Some(expected) {
        return Ok(());
    }
    Err(WorkspaceError::WrongBranch {
        path: path.to_path_buf(),
        expected: expected.to_string(),
        actual: actual.unwrap_or_else(|| "a detached HEAD".into()),
    })
}

/// Drops registrations of worktrees whose directory is gone (like `git worktree prune`).
fn prune_stale(repository: &Repository) -> Result<()> {
    let names = repository
        .worktrees()
        .context(|| format!("cannot list worktrees of {}", repo::place(repository)))?;
    for name in names.iter().filter_map(|n| n.ok().flatten()) {
        let Ok(worktree) = repository.find_worktree(name) else {
            continue;
        };
        if worktree.is_prunable(None).unwrap_or(false) {
            worktree
                .prune(None)
                .context(|| format!("cannot prune worktree {name}"))?;
        }
    }
    Ok(())
}

/// A worktree name (the directory under `.git/worktrees`) not used yet: the path's basename,
/// then `-2`, `-3`, …
fn free_worktree_name(repository: &Repository, path: &Path) -> String {
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into());
    let taken = |name: &str| repository.commondir().join("worktrees").join(name).exists();
    let mut name = base.clone();
    let mut n = 1;
    while taken(&name) {
        n += 1;
        name = format!("{base}-{n}");
    }
    name
}

/// Refuses a worktree path that is the workspace itself or contains it: deleting it would
/// destroy the primary checkout.
fn refuse_primary_path(workspace_root: &Path, path: &Path) -> Result<()> {
    let root = fs::canonicalize(workspace_root).unwrap_or_else(|_| workspace_root.to_path_buf());
    let target = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if root.starts_with(&target) {
        return Err(WorkspaceError::Io {
            context: format!(
                "worktree path {} would contain the workspace {}",
                path.display(),
                workspace_root.display()
            ),
            source: std::io::ErrorKind::InvalidInput.into(),
        });
    }
    Ok(())
}

/// Removes a directory tree; one that is gone (also when another removal got there first) is
/// not an error.
fn remove_dir(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other.context(|| format!("cannot remove {}", path.display())),
    }
}

fn same_path(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}
