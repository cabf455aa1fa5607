//! Git repositories for tests: a spec, a plan with N open tasks, and a `.loop/config` that
//! runs the fake agent in the given mode (extra config lines appended).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A bare copy of the repository at `source`, made at `bare` (its parents too): a remote for
/// git runs.
pub fn bare_copy(source: &Path, bare: &Path) {
    std::fs::create_dir_all(bare.parent().expect("parent")).expect("bare's parent");
    git(
        bare.parent().expect("parent"),
        &[
            "clone",
            "-q",
            "--bare",
            &source.display().to_string(),
            &bare.display().to_string(),
        ],
    );
}

/// A test repository on disk.
pub struct Repo {
    pub path: PathBuf,
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "test")
        .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
        .env("GIT_COMMITTER_NAME", "test")
        .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

impl Repo {
    /// Creates `dir/name` with `specs/demo.md`, `PLAN.md` holding `tasks` open boxes, and a
    /// `.loop/config` running `fake-agent.sh <mode>` plus `extra_config` lines.
    pub fn create(dir: &Path, name: &str, tasks: usize, mode: &str, extra_config: &[&str]) -> Repo {
        let path = dir.join(name);
        std::fs::create_dir_all(path.join("specs")).expect("specs dir");
        std::fs::create_dir_all(path.join(".loop")).expect(".loop dir");
        std::fs::write(
            path.join("specs/demo.md"),
            "# Demo spec\n\nDo the tasks of the plan.\n",
        )
        .expect("spec");
        let mut plan = String::from("# Plan\n\n## Tasks\n");
        for i in 1..=tasks {
            plan.push_str(&format!("- [ ] task number {i}\n"));
        }
        std::fs::write(path.join("PLAN.md"), plan).expect("plan");
        let mut config = format!("agent_cmd=sh {} {mode}\n", super::fake_agent());
        for line in extra_config {
            config.push_str(line);
            config.push('\n');
        }
        std::fs::write(path.join(".loop/config"), config).expect("config");
        std::fs::write(path.join(".gitignore"), "logs/\n").expect("gitignore");
        git(&path, &["init", "-q", "-b", "main"]);
        git(&path, &["add", "-A"]);
        git(&path, &["commit", "-q", "-m", "initial"]);
        Repo { path }
    }

    /// Runs git in the repository and returns stdout.
    pub fn git(&self, args: &[&str]) -> String {
        git(&self.path, args)
    }

    /// Commit subjects of `branch`, oldest first.
    pub fn subjects(&self, branch: &str) -> Vec<String> {
        self.git(&["log", "--reverse", "--format=%s", branch])
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// `file://` URL of the repository (for git-mode runs).
    pub fn url(&self) -> String {
        format!("file://{}", self.path.display())
    }
}

/// Commit subjects of `branch` in the repository at `dir`, oldest first.
pub fn subjects_at(dir: &Path, branch: &str) -> Vec<String> {
    git(dir, &["log", "--reverse", "--format=%s", branch])
        .lines()
        .map(str::to_string)
        .collect()
}
