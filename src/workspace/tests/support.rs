//! Helpers for the workspace tests: running the git CLI and making small repositories.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `git` in `dir` with a fixed identity; panics with git's stderr on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = try_git(dir, args);
    assert!(
        output.status.success(),
        "git {args:?} in {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Runs `git` in `dir` and returns its output whatever the outcome.
pub fn try_git(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("git")
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "advice.detachedHead=false",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs")
}

/// A new repository at `dir` on branch `branch` with one commit holding `README.md`.
pub fn init_repo_on(dir: &Path, branch: &str) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q", "-b", branch]);
    commit_file(dir, "README.md", "hello\n", "initial");
    dir.to_path_buf()
}

/// A new repository at `dir` on `main` with one commit.
pub fn init_repo(dir: &Path) -> PathBuf {
    init_repo_on(dir, "main")
}

/// Writes `path` in the checkout at `dir`, commits it on the current branch, returns the sha.
pub fn commit_file(dir: &Path, path: &str, content: &str, message: &str) -> String {
    write(dir, path, content);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", message]);
    head(dir)
}

/// Writes a file (creating parent directories).
pub fn write(dir: &Path, path: &str, content: &str) {
    let file = dir.join(path);
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    fs::write(file, content).unwrap();
}

/// Reads a file to a string.
pub fn read(dir: &Path, path: &str) -> String {
    fs::read_to_string(dir.join(path)).unwrap()
}

/// HEAD's sha in `dir`.
pub fn head(dir: &Path) -> String {
    git(dir, &["rev-parse", "HEAD"])
}

/// The sha of `rev` in `dir`.
pub fn rev(dir: &Path, rev: &str) -> String {
    git(dir, &["rev-parse", "--verify", rev])
}

/// The branch checked out in `dir` (empty when detached).
pub fn current_branch(dir: &Path) -> String {
    git(dir, &["branch", "--show-current"])
}

/// `file://` URL of a local repository.
pub fn file_url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

/// Remotes as the defaults configure them, with local repositories allowed under `root`.
pub fn remotes_under(root: &Path) -> crate::workspace::Remotes {
    let git = crate::settings::GitSettings {
        file_roots: vec![root.to_path_buf()],
        ..Default::default()
    };
    crate::workspace::Remotes::from_settings(&git)
}

/// `prepare_clone` from `url` with the default remotes and no handed credential.
pub fn clone_at(
    dir: &Path,
    url: &str,
    reference: &str,
    run_branch: &str,
    checkpoint: Option<(&Path, &str)>,
) -> crate::workspace::Result<String> {
    let remotes = remotes_under(Path::new("/"));
    let source = crate::workspace::Source {
        url,
        remotes: &remotes,
        credential: None,
    };
    crate::workspace::prepare_clone(dir, source, reference, run_branch, checkpoint)
}
