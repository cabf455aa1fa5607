//! The review diff of a run (docs/review.md "Diff"): the commits of the run branch since its
//! base, each with its files and patches, and the aggregate change. For a shared_fs run, while
//! its worktree exists, the aggregate also holds what the agent left uncommitted (untracked
//! files as added); a git run's diff is between two commits of the controller's mirror.
//! Computed with git2, in memory; called by the review API and, at completion, for the
//! `review-diff.json` snapshot.

use super::error::{Context, WorkspaceError};
use super::{repo, Result};
use crate::api::{DiffCommit, DiffFile, DiffStats, RunDiff, RunDiffSnapshot, RunWorktree};
use crate::domain::MergeStrategy;
use git2::{Commit, Delta, Diff, DiffFindOptions, DiffOptions, Patch, Repository, Sort, Tree};
use std::path::Path;

/// The diff of `wt`'s run in `workspace_root`. `base_ref` is the base branch; `head_ref` is the
/// merge target when the run merges into one that exists, else the run branch, else the merge
/// target: the first that exists (none: `NotFound`).
pub fn run_diff(workspace_root: &Path, wt: &RunWorktree) -> Result<RunDiffSnapshot> {
    let repository = repo::open(workspace_root)?;
    diff_in(&repository, wt, Some(Path::new(&wt.worktree_path)))
}

/// The diff between two commits of a repository without work trees (the controller's mirror
/// of a git run): `base_sha..head_sha`, shown as `base_ref` and `head_ref`. Committed changes
/// only; the aggregate files are `base...head`.
pub fn commits_diff(
    repository_path: &Path,
    (base_ref, base_sha): (&str, &str),
    (head_ref, head_sha): (&str, &str),
) -> Result<RunDiffSnapshot> {
    let repository = repo::open(repository_path)?;
    let find = |sha: &str| {
        git2::Oid::from_str(sha)
            .and_then(|oid| repository.find_commit(oid))
            .map_err(|_| WorkspaceError::NotFound {
                what: "commit",
                name: sha.to_string(),
                place: repo::place(&repository),
            })
    };
    let (base, head) = (find(base_sha)?, find(head_sha)?);
    let commits = commits(&repository, &base, &head)?;
    let files = committed_files(&repository, &base, &head, head_ref)?;
    Ok(RunDiffSnapshot {
        diff: RunDiff {
            base_ref: base_ref.to_string(),
            head_ref: head_ref.to_string(),
            commits,
            stats: stats_of(&files),
            files,
        },
        base_sha: base.id().to_string(),
        head_sha: head.id().to_string(),
    })
}

/// The files `head` changed since its common history with `base` (`git diff base...head`).
fn committed_files(
    repository: &Repository,
    base: &Commit,
    head: &Commit,
    head_ref: &str,
) -> Result<Vec<DiffFile>> {
    let merge_base = repository
        .merge_base(base.id(), head.id())
        .and_then(|oid| repository.find_commit(oid))
        .context(|| format!("no common history of {} and {head_ref}", base.id()))?;
    let old = tree_of(&merge_base)?;
    let new = tree_of(head)?;
    files_of(tree_diff(repository, Some(&old), &new)?)
}

fn diff_in(
    repository: &Repository,
    wt: &RunWorktree,
    worktree: Option<&Path>,
) -> Result<RunDiffSnapshot> {
    let base = repo::branch_commit(repository, &wt.base_branch)?;
    let head_ref = head_ref(repository, wt)?;
    let head = repo::branch_commit(repository, &head_ref)?;
    let commits = commits(repository, &base, &head)?;
    let live = worktree.filter(|p| head_ref == wt.run_branch && p.join(".git").exists());
    let files = match live {
        Some(path) => {
            let checkout = repo::open(path)?;
            let base_tree = checkout
                .find_commit(base.id())
                .and_then(|c| c.tree())
                .context(|| format!("cannot read the tree of {}", wt.base_branch))?;
            let mut options = DiffOptions::new();
            options
                .include_untracked(true)
                .recurse_untracked_dirs(true)
                .show_untracked_content(true);
            let diff = checkout
                .diff_tree_to_workdir_with_index(Some(&base_tree), Some(&mut options))
                .context(|| format!("cannot diff the worktree {}", path.display()))?;
            files_of(diff)?
        }
        None => committed_files(repository, &base, &head, &head_ref)?,
    };
    Ok(RunDiffSnapshot {
        diff: RunDiff {
            base_ref: wt.base_branch.clone(),
            head_ref,
            commits,
            stats: stats_of(&files),
            files,
        },
        base_sha: base.id().to_string(),
        head_sha: head.id().to_string(),
    })
}

/// Which branch the diff shows as the head.
fn head_ref(repository: &Repository, wt: &RunWorktree) -> Result<String> {
    let target = wt
        .merge_target_branch
        .as_deref()
        .filter(|t| repo::branch_exists(repository, t));
    if let Some(t) = target.filter(|_| wt.merge_strategy != MergeStrategy::None) {
        return Ok(t.to_string());
    }
    if repo::branch_exists(repository, &wt.run_branch) {
        return Ok(wt.run_branch.clone());
    }
    target.map(str::to_string).ok_or(WorkspaceError::NotFound {
        what: "branch",
        name: wt.run_branch.clone(),
        place: repo::place(repository),
    })
}

/// The commits reachable from `head` and not from `base`, oldest first.
fn commits(repository: &Repository, base: &Commit, head: &Commit) -> Result<Vec<DiffCommit>> {
    let mut walk = repository
        .revwalk()
        .context(|| "cannot walk the history".into())?;
    walk.set_sorting(Sort::TOPOLOGICAL | Sort::TIME | Sort::REVERSE)
        .context(|| "cannot sort the history".into())?;
    walk.push(head.id())
        .context(|| "cannot walk the run branch".into())?;
    walk.hide(base.id())
        .context(|| "cannot walk the base branch".into())?;
    let mut out = Vec::new();
    for oid in walk {
        let oid = oid.context(|| "cannot walk the history".into())?;
        let commit = repository
            .find_commit(oid)
            .context(|| format!("cannot read commit {oid}"))?;
        let parent = match commit.parent(0) {
            Ok(p) => Some(tree_of(&p)?),
            Err(_) => None,
        };
        let files = files_of(tree_diff(repository, parent.as_ref(), &tree_of(&commit)?)?)?;
        let author = commit.author();
        out.push(DiffCommit {
            sha: oid.to_string(),
            message: commit
                .summary()
                .ok()
                .flatten()
                .unwrap_or_default()
                .to_string(),
            author: author.name().unwrap_or_default().to_string(),
            timestamp: iso_time(author.when()),
            stats: stats_of(&files),
            files,
        });
    }
    Ok(out)
}

fn tree_of<'r>(commit: &Commit<'r>) -> Result<Tree<'r>> {
    commit
        .tree()
        .context(|| format!("cannot read the tree of {}", commit.id()))
}

fn tree_diff<'r>(repository: &'r Repository, old: Option<&Tree>, new: &Tree) -> Result<Diff<'r>> {
    repository
        .diff_tree_to_tree(old, Some(new), None)
        .context(|| "cannot diff trees".into())
}

/// The files of a diff (renames found), each with its patch text and line counts.
fn files_of(mut diff: Diff) -> Result<Vec<DiffFile>> {
    let mut find = DiffFindOptions::new();
    find.renames(true);
    diff.find_similar(Some(&mut find))
        .context(|| "cannot detect renames".into())?;
    let mut out = Vec::new();
    for idx in 0..diff.deltas().len() {
        let Some(delta) = diff.get_delta(idx) else {
            continue;
        };
        let new_path = delta
            .new_file()
            .path()
            .map(|p| p.to_string_lossy().into_owned());
        let old_path = delta
            .old_file()
            .path()
            .map(|p| p.to_string_lossy().into_owned());
        let (status, path) = match delta.status() {
            Delta::Added | Delta::Untracked | Delta::Copied => ("added", new_path),
            Delta::Deleted => ("deleted", old_path.clone()),
            Delta::Renamed => ("renamed", new_path),
            _ => ("modified", new_path.or(old_path.clone())),
        };
        let mut patch = Patch::from_diff(&diff, idx).context(|| "cannot build a patch".into())?;
        let (text, additions, deletions) = match patch.as_mut() {
            Some(p) => {
                let (_, adds, dels) = p.line_stats().context(|| "cannot count lines".into())?;
                let buf = p.to_buf().context(|| "cannot print a patch".into())?;
                (
                    String::from_utf8_lossy(&buf).into_owned(),
                    adds as u64,
                    dels as u64,
                )
            }
            None => (String::new(), 0, 0),
        };
        out.push(DiffFile {
            path: path.unwrap_or_default(),
            status: status.to_string(),
            old_path: (status == "renamed").then_some(old_path).flatten(),
            patch: text,
            additions,
            deletions,
        });
    }
    Ok(out)
}

fn stats_of(files: &[DiffFile]) -> DiffStats {
    DiffStats {
        additions: files.iter().map(|f| f.additions).sum(),
        deletions: files.iter().map(|f| f.deletions).sum(),
        files_changed: files.len() as u64,
    }
}

/// `git log --format=%aI`: the author's local time with its offset, to the second.
fn iso_time(t: git2::Time) -> String {
    let offset = chrono::FixedOffset::east_opt(t.offset_minutes() * 60)
        .unwrap_or_else(|| chrono::FixedOffset::east_opt(0).expect("zero offset"));
    chrono::DateTime::from_timestamp(t.seconds(), 0)
        .map(|d| {
            d.with_timezone(&offset)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
        })
        .unwrap_or_default()
}
