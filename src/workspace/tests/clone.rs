//! The worker's clone: preparing a step's start, checkpoint commits, clone failures.

use super::support::{
    clone_at, commit_file, current_branch, file_url, git, head, init_repo, read, write,
};
use crate::workspace::checkpoint_commit;
use std::fs;

#[test]
fn prepare_clone_checks_out_the_run_branch_at_the_ref_and_excludes_runner_notes() {
    let tmp = tempfile::tempdir().unwrap();
    let upstream = init_repo(&tmp.path().join("upstream"));
    let start = head(&upstream);
    git(&upstream, &["tag", "v1"]);
    commit_file(&upstream, "later.txt", "later\n", "after the tag");
    let dir = tmp.path().join("work");

    let sha = clone_at(&dir, &file_url(&upstream), "v1", "run/x", None).unwrap();
    assert_eq!(sha, start);
    assert_eq!(head(&dir), start);
    assert_eq!(current_branch(&dir), "run/x");
    assert!(!dir.join("later.txt").exists());
    let exclude = read(&dir, ".git/info/exclude");
    assert_eq!(
        exclude
            .lines()
            .filter(|l| *l == "/.loop/runner-notes.txt")
            .count(),
        1
    );

    write(&dir, ".loop/runner-notes.txt", "notes");
    assert_eq!(
        git(&dir, &["status", "--porcelain"]),
        "",
        "notes are ignored"
    );
}

#[test]
fn prepare_clone_without_a_checkpoint_ignores_local_commits_and_discards_leftovers() {
    let tmp = tempfile::tempdir().unwrap();
    let upstream = init_repo(&tmp.path().join("upstream"));
    let start = head(&upstream);
    let url = file_url(&upstream);
    let dir = tmp.path().join("work");
    clone_at(&dir, &url, "main", "run/x", None).unwrap();
    // A step whose lease was lost committed here; the controller never accepted it.
    commit_file(&dir, "done.txt", "done\n", "discarded step");

    write(&dir, "README.md", "half-written edit");
    write(&dir, "deep/new/file.txt", "untracked");
    let sha = clone_at(&dir, &url, "main", "run/x", None).unwrap();
    assert_eq!(sha, start);
    assert_eq!(head(&dir), start);
    assert!(!dir.join("done.txt").exists());
    assert_eq!(read(&dir, "README.md"), "hello\n");
    assert!(!dir.join("deep").exists());
    assert_eq!(git(&dir, &["status", "--porcelain"]), "");
    let exclude = read(&dir, ".git/info/exclude");
    assert_eq!(exclude.matches("/.loop/runner-notes.txt").count(), 1);
}

#[test]
fn prepare_clone_replaces_a_clone_of_another_url() {
    let tmp = tempfile::tempdir().unwrap();
    let first = init_repo(&tmp.path().join("first"));
    let second = init_repo(&tmp.path().join("second"));
    let second_head = commit_file(&second, "second.txt", "2\n", "second");
    let dir = tmp.path().join("work");
    clone_at(&dir, &file_url(&first), "main", "run/x", None).unwrap();
    let sha = clone_at(&dir, &file_url(&second), "main", "run/x", None).unwrap();
    assert_eq!(sha, second_head);
    assert!(dir.join("second.txt").is_file());
}

#[test]
fn cloning_a_missing_repository_names_it_and_leaves_no_half_clone() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nowhere");
    let work = tmp.path().join("work");
    let error = clone_at(&work, &file_url(&missing), "main", "run/x", None)
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        format!("cannot fetch {}: repository not found", missing.display())
    );
    assert!(!work.exists(), "no half-made clone is left");
}

#[test]
fn an_unknown_ref_names_the_ref_and_the_url() {
    let tmp = tempfile::tempdir().unwrap();
    let upstream = init_repo(&tmp.path().join("upstream"));
    let url = file_url(&upstream);
    let error = clone_at(&tmp.path().join("work"), &url, "nope", "run/x", None)
        .unwrap_err()
        .to_string();
    assert_eq!(error, format!("ref not found in {url}: nope"));
}

#[test]
fn checkpoint_commits_every_change_except_ignored_files() {
    let tmp = tempfile::tempdir().unwrap();
    let upstream = init_repo(&tmp.path().join("upstream"));
    commit_file(&upstream, ".gitignore", "target/\n", "ignore");
    commit_file(&upstream, "old.txt", "old\n", "old");
    let dir = tmp.path().join("work");
    let start = clone_at(&dir, &file_url(&upstream), "main", "run/x", None).unwrap();
    assert_eq!(
        checkpoint_commit(&dir, "nothing").unwrap(),
        start,
        "no change, no commit"
    );

    write(&dir, "README.md", "changed\n");
    write(&dir, "src/new.rs", "fn main() {}\n");
    write(&dir, "target/build.bin", "binary");
    write(&dir, ".loop/runner-notes.txt", "notes");
    fs::remove_file(dir.join("old.txt")).unwrap();
    let sha = checkpoint_commit(&dir, "loopd: checkpoint").unwrap();

    assert_ne!(sha, start);
    assert_eq!(head(&dir), sha);
    assert_eq!(current_branch(&dir), "run/x");
    let files = git(&dir, &["ls-tree", "-r", "--name-only", "HEAD"]);
    let files: Vec<&str> = files.lines().collect();
    assert_eq!(files, [".gitignore", "README.md", "src/new.rs"]);
    assert_eq!(git(&dir, &["status", "--porcelain"]), "");
    assert_eq!(
        git(&dir, &["log", "-1", "--format=%s"]),
        "loopd: checkpoint"
    );
}

#[test]
fn checkpoint_uses_the_repository_user_when_configured() {
    let tmp = tempfile::tempdir().unwrap();
    let upstream = init_repo(&tmp.path().join("upstream"));
    let dir = tmp.path().join("work");
    clone_at(&dir, &file_url(&upstream), "main", "run/x", None).unwrap();
    git(&dir, &["config", "user.name", "Agent Smith"]);
    git(&dir, &["config", "user.email", "agent@example.com"]);
    write(&dir, "x.txt", "x");
    checkpoint_commit(&dir, "step").unwrap();
    assert_eq!(
        git(&dir, &["log", "-1", "--format=%an <%ae>"]),
        "Agent Smith <agent@example.com>"
    );
}
