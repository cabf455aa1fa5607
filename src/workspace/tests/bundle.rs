//! Bundles: written by us and read by the git CLI, written by the git CLI and read by us, and
//! a step moving from one worker's clone to another's.

use super::support::{
    clone_at, commit_file, current_branch, file_url, git, head, init_repo, read, try_git, write,
};
use crate::workspace::{checkpoint_commit, import_bundle, write_bundle, WorkspaceError};
use std::path::{Path, PathBuf};

struct Setup {
    tmp: tempfile::TempDir,
    url: String,
}

impl Setup {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let upstream = init_repo(&tmp.path().join("upstream"));
        commit_file(&upstream, "src/lib.rs", "pub fn f() {}\n", "code");
        let url = file_url(&upstream);
        Setup { tmp, url }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// A worker's clone at `name`, started from `repo_ref` without a checkpoint.
    fn clone_at(&self, name: &str) -> PathBuf {
        let dir = self.path(name);
        clone_at(&dir, &self.url, "main", "run/x", None).unwrap();
        dir
    }
}

/// What an agent might leave behind in a step.
fn agent_step(dir: &Path, n: u32) -> String {
    write(dir, "README.md", &format!("step {n}\n"));
    write(dir, &format!("notes/step{n}.md"), "details\n");
    write(dir, ".loop/runner-notes.txt", "runner notes");
    checkpoint_commit(dir, &format!("step {n}")).unwrap()
}

#[test]
fn a_step_moves_to_a_fresh_clone_through_a_bundle_and_back() {
    let setup = Setup::new();
    let first = setup.clone_at("worker-a");
    let head_one = agent_step(&first, 1);
    let bundle_one = setup.path("step1.bundle");
    assert_eq!(
        write_bundle(&first, "run/x", None, &bundle_one).unwrap(),
        head_one
    );

    let second = setup.path("worker-b/run");
    let checkpoint = Some((bundle_one.as_path(), head_one.as_str()));
    let sha = clone_at(&second, &setup.url, "main", "run/x", checkpoint).unwrap();
    assert_eq!(sha, head_one);
    assert_eq!(head(&second), head_one);
    assert_eq!(current_branch(&second), "run/x");
    assert_eq!(read(&second, "README.md"), "step 1\n");
    assert_eq!(read(&second, "notes/step1.md"), "details\n");
    assert!(!second.join(".loop/runner-notes.txt").exists());

    // The next step goes back to the first worker with a bundle of only the new commit.
    let head_two = agent_step(&second, 2);
    let bundle_two = setup.path("step2.bundle");
    write_bundle(&second, "run/x", Some(&head_one), &bundle_two).unwrap();
    let checkpoint = Some((bundle_two.as_path(), head_two.as_str()));
    let sha = clone_at(&first, &setup.url, "main", "run/x", checkpoint).unwrap();
    assert_eq!(sha, head_two);
    assert_eq!(read(&first, "notes/step2.md"), "details\n");
    assert_eq!(git(&first, &["status", "--porcelain"]), "");
}

#[test]
fn the_git_cli_verifies_and_clones_our_bundles() {
    let setup = Setup::new();
    let dir = setup.clone_at("worker");
    let head_one = agent_step(&dir, 1);
    let full = setup.path("full.bundle");
    write_bundle(&dir, "run/x", None, &full).unwrap();
    let head_two = agent_step(&dir, 2);
    let thin = setup.path("thin.bundle");
    write_bundle(&dir, "run/x", Some(&head_one), &thin).unwrap();
    let full_arg = full.to_str().unwrap();
    let thin_arg = thin.to_str().unwrap();

    let cloned = setup.path("cloned");
    git(
        setup.tmp.path(),
        &["clone", "-q", "-b", "run/x", full_arg, "cloned"],
    );
    assert_eq!(head(&cloned), head_one);
    assert_eq!(read(&cloned, "README.md"), "step 1\n");
    git(&cloned, &["fsck", "--no-progress"]);

    // `cloned` has the base, so the incremental bundle verifies and fetches there.
    git(&cloned, &["bundle", "verify", "-q", thin_arg]);
    git(
        &cloned,
        &["fetch", "-q", thin_arg, "run/x:refs/heads/step2"],
    );
    assert_eq!(rev_of(&cloned, "step2"), head_two);
    git(&cloned, &["fsck", "--no-progress"]);

    // A clone without the base does not.
    let bare = setup.clone_at("without-base");
    assert!(!try_git(&bare, &["bundle", "verify", "-q", thin_arg])
        .status
        .success());
}

fn rev_of(dir: &Path, rev: &str) -> String {
    git(dir, &["rev-parse", rev])
}

#[test]
fn bundles_of_the_git_cli_import() {
    let setup = Setup::new();
    let dir = setup.clone_at("worker");
    let base = head(&dir);
    let head_one = commit_file(&dir, "a.txt", "a\n", "one");
    let cli_bundle = setup.path("cli.bundle");
    let range = format!("{base}..run/x");
    git(
        &dir,
        &[
            "bundle",
            "create",
            "-q",
            cli_bundle.to_str().unwrap(),
            &range,
        ],
    );

    let other = setup.clone_at("other");
    assert_eq!(import_bundle(&other, &cli_bundle).unwrap(), head_one);
    assert_eq!(git(&other, &["cat-file", "-t", &head_one]), "commit");
}

#[test]
fn a_bundle_whose_base_is_missing_is_refused() {
    let setup = Setup::new();
    let dir = setup.clone_at("worker");
    let head_one = agent_step(&dir, 1);
    agent_step(&dir, 2);
    let bundle = setup.path("thin.bundle");
    write_bundle(&dir, "run/x", Some(&head_one), &bundle).unwrap();

    let fresh = setup.clone_at("fresh");
    let error = import_bundle(&fresh, &bundle).unwrap_err();
    assert!(
        matches!(error, WorkspaceError::MissingPrerequisite { ref sha, .. } if *sha == head_one),
        "{error}"
    );
}

#[test]
fn a_bundle_without_new_commits_still_imports() {
    let setup = Setup::new();
    let dir = setup.clone_at("worker");
    let head_one = agent_step(&dir, 1);
    let bundle = setup.path("empty.bundle");
    write_bundle(&dir, "run/x", Some(&head_one), &bundle).unwrap();
    git(&dir, &["bundle", "verify", "-q", bundle.to_str().unwrap()]);
    assert_eq!(import_bundle(&dir, &bundle).unwrap(), head_one);
}

#[test]
fn a_file_that_is_not_a_bundle_is_refused() {
    let setup = Setup::new();
    let dir = setup.clone_at("worker");
    let bogus = setup.path("bogus.bundle");
    std::fs::write(&bogus, "PK\x03\x04 not a bundle\n").unwrap();
    let error = import_bundle(&dir, &bogus).unwrap_err().to_string();
    assert!(
        error.starts_with(&format!("invalid bundle {}", bogus.display())),
        "{error}"
    );
}

#[test]
fn a_newer_bundle_from_a_refused_attempt_restores_the_recorded_checkpoint() {
    // Worker A's step 2 uploaded its bundle but lost its lease before completing: the
    // controller still records step 1's head, so the next attempt starts there.
    let setup = Setup::new();
    let a = setup.clone_at("worker-a");
    let head_one = agent_step(&a, 1);
    let head_two = agent_step(&a, 2);
    let newest = setup.path("run.bundle");
    assert_eq!(write_bundle(&a, "run/x", None, &newest).unwrap(), head_two);

    let b = setup.path("worker-b/run");
    let checkpoint = Some((newest.as_path(), head_one.as_str()));
    let sha = clone_at(&b, &setup.url, "main", "run/x", checkpoint).unwrap();
    assert_eq!(sha, head_one);
    assert_eq!(head(&b), head_one);
    assert_eq!(read(&b, "README.md"), "step 1\n");
    assert!(
        !b.join("notes/step2.md").exists(),
        "the refused work is not applied"
    );
}

#[test]
fn a_bundle_without_the_recorded_checkpoint_is_refused() {
    let setup = Setup::new();
    let a = setup.clone_at("worker-a");
    agent_step(&a, 1);
    let bundle = setup.path("run.bundle");
    write_bundle(&a, "run/x", None, &bundle).unwrap();
    let b = setup.path("worker-b/run");
    let unknown = "0123456789abcdef0123456789abcdef01234567";
    let err = clone_at(
        &b,
        &setup.url,
        "main",
        "run/x",
        Some((bundle.as_path(), unknown)),
    )
    .unwrap_err();
    assert!(matches!(err, WorkspaceError::InvalidBundle { .. }), "{err}");
}
