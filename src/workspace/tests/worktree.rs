//! Planning, creating, reusing and removing run worktrees.

use super::support::{current_branch, git, init_repo, init_repo_on, rev, write};
use crate::api::RunWorktree;
use crate::domain::MergeStrategy;
use crate::workspace::{
    create_worktree, detect_base_branch, is_clean, plan_worktree, remove_worktree,
    DEFAULT_PATH_TEMPLATE,
};
use std::path::{Path, PathBuf};

fn plan(root: &Path, name: &str) -> RunWorktree {
    plan_worktree(
        root,
        name,
        None,
        "run/",
        None,
        MergeStrategy::Squash,
        DEFAULT_PATH_TEMPLATE,
    )
    .unwrap()
}

fn worktree_list(root: &Path) -> String {
    git(root, &["worktree", "list", "--porcelain"])
}

#[test]
fn plan_names_the_branch_after_the_run_and_skips_taken_branches_and_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let root = init_repo(&tmp.path().join("app"));

    let first = plan(&root, "My_Feature");
    assert_eq!(first.run_branch, "run/my-feature");
    assert_eq!(first.base_branch, "main");
    assert_eq!(
        PathBuf::from(&first.worktree_path),
        tmp.path().join("app.run-my-feature")
    );
    assert_eq!(
        first.merge_strategy,
        MergeStrategy::None,
        "no target, no merge"
    );
    assert_eq!(first.merge_target_branch, None);
    assert_eq!(first.provider, "git");

    git(&root, &["branch", "run/my-feature"]);
    assert_eq!(plan(&root, "My_Feature").run_branch, "run/my-feature-2");

    std::fs::create_dir(tmp.path().join("app.run-my-feature-2")).unwrap();
    let third = plan(&root, "My_Feature");
    assert_eq!(third.run_branch, "run/my-feature-3");
    assert_eq!(
        PathBuf::from(&third.worktree_path),
        tmp.path().join("app.run-my-feature-3")
    );
}

#[test]
fn plan_keeps_the_strategy_when_a_target_is_set() {
    let tmp = tempfile::tempdir().unwrap();
    let root = init_repo(&tmp.path().join("app"));
    let wt = plan_worktree(
        &root,
        "x",
        Some("main"),
        "loop/",
        Some("release"),
        MergeStrategy::Squash,
        "wt/{{ branch | sanitize }}",
    )
    .unwrap();
    assert_eq!(wt.run_branch, "loop/x");
    assert_eq!(wt.merge_target_branch.as_deref(), Some("release"));
    assert_eq!(wt.merge_strategy, MergeStrategy::Squash);
    assert_eq!(PathBuf::from(wt.worktree_path), root.join("wt/loop-x"));
}

#[test]
fn base_branch_is_the_configured_then_the_checked_out_then_the_default_branch() {
    let tmp = tempfile::tempdir().unwrap();
    let root = init_repo(&tmp.path().join("app"));
    git(&root, &["checkout", "-q", "-b", "dev"]);
    assert_eq!(detect_base_branch(&root, None).unwrap(), "dev");
    assert_eq!(detect_base_branch(&root, Some("next")).unwrap(), "next");
    git(&root, &["checkout", "-q", "--detach"]);
    assert_eq!(detect_base_branch(&root, None).unwrap(), "main");

    let old = init_repo_on(&tmp.path().join("old"), "master");
    git(&old, &["checkout", "-q", "--detach"]);
    assert_eq!(detect_base_branch(&old, None).unwrap(), "master");
}

#[test]
fn create_worktree_checks_out_the_run_branch_and_reuses_it_after_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let root = init_repo(&tmp.path().join("app"));
    let wt = plan(&root, "feature");
    create_worktree(&root, &wt).unwrap();

    let path = PathBuf::from(&wt.worktree_path);
    assert_eq!(current_branch(&path), "run/feature");
    assert_eq!(rev(&root, "run/feature"), rev(&root, "main"));
    assert!(path.join("README.md").is_file());
    assert!(worktree_list(&root).contains(&format!("worktree {}", path.display())));
    assert_eq!(current_branch(&root), "main", "primary checkout untouched");

    // A second create (crash recovery) keeps the work in progress.
    write(&path, "wip.txt", "work in progress");
    create_worktree(&root, &wt).unwrap();
    assert!(path.join("wip.txt").is_file());
    assert_eq!(current_branch(&path), "run/feature");
}

#[test]
fn create_worktree_replaces_a_stale_directory_on_another_branch() {
    let tmp = tempfile::tempdir().unwrap();
    let root = init_repo(&tmp.path().join("app"));
    let wt = plan(&root, "stale");
    let path = PathBuf::from(&wt.worktree_path);

    git(&root, &["branch", "other"]);
    git(
        &root,
        &["worktree", "add", "-q", path.to_str().unwrap(), "other"],
    );
    write(&path, "leftover.txt", "old");
    create_worktree(&root, &wt).unwrap();
    assert_eq!(current_branch(&path), "run/stale");
    assert!(!path.join("leftover.txt").exists());

    // A plain directory in the way is replaced too.
    remove_worktree(&root, &wt).unwrap();
    write(&path, "junk.txt", "junk");
    create_worktree(&root, &wt).unwrap();
    assert_eq!(current_branch(&path), "run/stale");
    assert!(!path.join("junk.txt").exists());
}

#[test]
fn create_worktree_recreates_a_deleted_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let root = init_repo(&tmp.path().join("app"));
    let wt = plan(&root, "gone");
    create_worktree(&root, &wt).unwrap();
    std::fs::remove_dir_all(&wt.worktree_path).unwrap();
    create_worktree(&root, &wt).unwrap();
    assert_eq!(current_branch(Path::new(&wt.worktree_path)), "run/gone");
}

#[test]
fn remove_worktree_deletes_the_directory_and_keeps_the_branch() {
    let tmp = tempfile::tempdir().unwrap();
    let root = init_repo(&tmp.path().join("app"));
    let wt = plan(&root, "done");
    create_worktree(&root, &wt).unwrap();
    remove_worktree(&root, &wt).unwrap();

    assert!(!Path::new(&wt.worktree_path).exists());
    assert!(!worktree_list(&root).contains(&wt.worktree_path));
    assert_eq!(rev(&root, "run/done"), rev(&root, "main"));
    remove_worktree(&root, &wt).expect("removing twice is fine");
}

#[test]
fn a_worktree_path_containing_the_workspace_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = init_repo(&tmp.path().join("app"));
    let mut wt = plan(&root, "bad");
    wt.worktree_path = tmp.path().display().to_string();
    let error = create_worktree(&root, &wt).unwrap_err().to_string();
    assert!(error.contains("would contain the workspace"), "{error}");
    assert!(root.join("README.md").is_file());
}

#[test]
fn is_clean_counts_untracked_files_but_not_ignored_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let root = init_repo(&tmp.path().join("app"));
    super::support::commit_file(&root, ".gitignore", "target/\n", "ignore");
    assert!(is_clean(&root).unwrap());
    write(&root, "target/out.bin", "x");
    assert!(is_clean(&root).unwrap());
    write(&root, "new.txt", "x");
    assert!(!is_clean(&root).unwrap());
}
