//! Merging run branches into their targets in memory.

use super::support::{commit_file, current_branch, git, init_repo, read, rev, try_git, write};
use crate::api::RunWorktree;
use crate::domain::MergeStrategy;
use crate::workspace::{create_worktree, merge_run_branch, plan_worktree, WorkspaceError};
use std::path::{Path, PathBuf};

/// A repository `app` with a run worktree for run `feature`, merging into `target`.
fn setup(target: &str, strategy: MergeStrategy) -> (tempfile::TempDir, PathBuf, RunWorktree) {
    let tmp = tempfile::tempdir().unwrap();
    let root = init_repo(&tmp.path().join("app"));
    let wt = plan_worktree(
        &root,
        "feature",
        None,
        "run/",
        Some(target),
        strategy,
        "../wt",
    )
    .unwrap();
    create_worktree(&root, &wt).unwrap();
    (tmp, root, wt)
}

fn worktree(wt: &RunWorktree) -> &Path {
    Path::new(&wt.worktree_path)
}

fn parents(dir: &Path, rev: &str) -> usize {
    git(dir, &["rev-list", "--parents", "-n", "1", rev])
        .split_whitespace()
        .count()
        - 1
}

#[test]
fn merge_fast_forwards_a_new_target_created_from_the_base() {
    let (_tmp, root, wt) = setup("release", MergeStrategy::Merge);
    let run_head = commit_file(worktree(&wt), "feature.txt", "f\n", "add feature");
    let main_before = rev(&root, "main");

    let merged = merge_run_branch(&root, &wt).unwrap().unwrap();
    assert_eq!(
        merged, run_head,
        "fast-forward when the target has not moved"
    );
    assert_eq!(rev(&root, "release"), run_head);
    assert_eq!(rev(&root, "main"), main_before);
    assert_eq!(current_branch(&root), "main");
}

#[test]
fn merge_commits_both_parents_and_updates_the_clean_checked_out_target() {
    let (_tmp, root, wt) = setup("main", MergeStrategy::Merge);
    let main_head = commit_file(&root, "main.txt", "m\n", "main moves on");
    let run_head = commit_file(worktree(&wt), "feature.txt", "f\n", "add feature");

    let merged = merge_run_branch(&root, &wt).unwrap().unwrap();
    assert_eq!(rev(&root, "main"), merged);
    assert_eq!(parents(&root, &merged), 2);
    assert_eq!(rev(&root, &format!("{merged}^1")), main_head);
    assert_eq!(rev(&root, &format!("{merged}^2")), run_head);
    assert_eq!(current_branch(&root), "main");
    assert_eq!(
        read(&root, "feature.txt"),
        "f\n",
        "checkout follows the target"
    );
    assert_eq!(git(&root, &["status", "--porcelain"]), "");
}

#[test]
fn squash_writes_one_commit_and_leaves_the_primary_checkout_alone() {
    let (_tmp, root, wt) = setup("main", MergeStrategy::Squash);
    git(&root, &["checkout", "-q", "-b", "dev"]);
    write(&root, "scratch.txt", "uncommitted work");
    let main_before = rev(&root, "main");
    commit_file(worktree(&wt), "a.txt", "a\n", "one");
    commit_file(worktree(&wt), "b.txt", "b\n", "two");

    let merged = merge_run_branch(&root, &wt).unwrap().unwrap();
    assert_eq!(rev(&root, "main"), merged);
    assert_eq!(parents(&root, &merged), 1);
    assert_eq!(rev(&root, &format!("{merged}^")), main_before);
    assert_eq!(
        git(&root, &["log", "-1", "--format=%s", &merged]),
        "Squash merge from run/feature"
    );
    assert_eq!(git(&root, &["show", &format!("{merged}:b.txt")]), "b");
    assert_eq!(current_branch(&root), "dev");
    assert_eq!(read(&root, "scratch.txt"), "uncommitted work");
    assert!(
        !root.join("a.txt").exists(),
        "dev's working tree is not touched"
    );
}

#[test]
fn squash_without_changes_makes_no_commit() {
    let (_tmp, root, wt) = setup("main", MergeStrategy::Squash);
    commit_file(worktree(&wt), "a.txt", "a\n", "one");
    let first = merge_run_branch(&root, &wt).unwrap().unwrap();
    let again = merge_run_branch(&root, &wt).unwrap().unwrap();
    assert_eq!(again, first);
    assert_eq!(rev(&root, "main"), first);
}

#[test]
fn a_conflict_names_the_paths_and_changes_nothing() {
    let (_tmp, root, wt) = setup("main", MergeStrategy::Merge);
    let main_head = commit_file(&root, "README.md", "main's text\n", "main edit");
    commit_file(worktree(&wt), "README.md", "run's text\n", "run edit");
    let run_head = rev(&root, "run/feature");

    let error = merge_run_branch(&root, &wt).unwrap_err();
    assert!(
        matches!(&error, WorkspaceError::Conflict { paths, .. } if paths == &["README.md"]),
        "{error}"
    );
    assert!(error.to_string().contains("README.md"), "{error}");
    assert_eq!(rev(&root, "main"), main_head);
    assert_eq!(rev(&root, "run/feature"), run_head);
    assert_eq!(read(&root, "README.md"), "main's text\n");
    assert_eq!(git(&root, &["status", "--porcelain"]), "");
}

#[test]
fn a_conflict_into_a_missing_target_does_not_create_it() {
    let (_tmp, root, wt) = setup("release", MergeStrategy::Squash);
    commit_file(&root, "README.md", "main's text\n", "main edit");
    commit_file(worktree(&wt), "README.md", "run's text\n", "run edit");
    assert!(merge_run_branch(&root, &wt).is_err());
    assert!(!try_git(&root, &["rev-parse", "--verify", "release"])
        .status
        .success());
}

#[test]
fn merging_into_a_dirty_checked_out_target_is_refused() {
    let (_tmp, root, wt) = setup("main", MergeStrategy::Merge);
    let main_head = rev(&root, "main");
    commit_file(worktree(&wt), "feature.txt", "f\n", "add feature");
    write(&root, "README.md", "edited but not committed\n");

    let error = merge_run_branch(&root, &wt).unwrap_err();
    assert!(
        matches!(error, WorkspaceError::DirtyCheckout { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("dirty working tree"), "{error}");
    assert_eq!(rev(&root, "main"), main_head);
    assert_eq!(read(&root, "README.md"), "edited but not committed\n");
}

#[test]
fn a_run_without_a_merge_target_is_not_merged() {
    let (_tmp, root, mut wt) = setup("main", MergeStrategy::Merge);
    wt.merge_target_branch = None;
    assert_eq!(merge_run_branch(&root, &wt).unwrap(), None);
}
