//! Local git excludes (`info/exclude` of the repository, never committed) for the files loopd
//! itself writes into a working tree: the runner notes of a git run's clone, and a shared_fs
//! run's log directory (`<ws>/<log_dir>`: runner notes, the single host's copies of the run's
//! files, postmortem analyses) in its workspace, so that they neither dirty the checkout a
//! merge updates nor end up in a commit. Blocking.

use super::error::Context;
use super::{repo, Result};
use git2::Repository;
use std::fs;
use std::path::Path;
use std::sync::Mutex;

/// Serialises the read-then-append of exclude files within this process.
static EXCLUDE_LOCK: Mutex<()> = Mutex::new(());

/// Appends `line` to the repository's `info/exclude` (shared by its worktrees) unless a line
/// already says it.
pub(crate) fn add_line(repository: &Repository, line: &str) -> Result<()> {
    let _guard = EXCLUDE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let info = repository.commondir().join("info");
    let exclude = info.join("exclude");
    let current = fs::read_to_string(&exclude).unwrap_or_default();
    if current.lines().any(|l| l.trim() == line) {
        return Ok(());
    }
    let separator = if current.is_empty() || current.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    fs::create_dir_all(&info).context(|| format!("cannot create {}", info.display()))?;
    let content = format!("{current}{separator}{line}\n");
    fs::write(&exclude, content).context(|| format!("cannot write {}", exclude.display()))
}

/// Excludes `<workspace_root>/<log_dir>` in the repository at `workspace_root` when that
/// directory is inside its working tree (not the tree itself, not `.git`) and git does not
/// ignore it already; whether a line was added.
pub fn exclude_log_dir(workspace_root: &Path, log_dir: &str) -> Result<bool> {
    let repository = repo::open(workspace_root)?;
    if repository.workdir().is_none() {
        return Ok(false);
    }
    let root = super::naming::normalize(workspace_root);
    let Ok(rel) = super::naming::normalize(&root.join(log_dir))
        .strip_prefix(&root)
        .map(Path::to_path_buf)
    else {
        return Ok(false);
    };
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().to_string())
        .collect();
    if parts.is_empty() || parts[0] == ".git" {
        return Ok(false);
    }
    let rel = parts.join("/");
    // A file inside: git walks up its directories, so `logs/`, `/logs/loop/` and `logs/**`
    // all count.
    let probe = format!("{rel}/run-0/report.tsv");
    let ignored = repository.is_path_ignored(&probe).context(|| {
        format!(
            "cannot read the ignore rules of {}",
            repo::place(&repository)
        )
    })?;
    if ignored {
        return Ok(false);
    }
    add_line(&repository, &format!("/{}/", escape(&rel)))?;
    Ok(true)
}

/// A path as a literal gitignore pattern: glob characters and trailing spaces escaped.
fn escape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if matches!(c, '\\' | '*' | '?' | '[') {
            out.push('\\');
        }
        out.push(c);
    }
    let kept = out.trim_end_matches(' ').len();
    let trailing = out.len() - kept;
    out.truncate(kept);
    out.push_str(&"\\ ".repeat(trailing));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_at(dir: &Path, gitignore: Option<&str>) -> Repository {
        let r = Repository::init(dir).expect("init");
        if let Some(text) = gitignore {
            fs::write(dir.join(".gitignore"), text).expect("gitignore");
        }
        r
    }

    fn exclude_of(dir: &Path) -> String {
        fs::read_to_string(dir.join(".git/info/exclude")).unwrap_or_default()
    }

    #[test]
    fn the_log_dir_is_excluded_once_unless_ignored_or_outside() {
        let tmp = tempfile::tempdir().expect("tmp");
        let ws = tmp.path().join("ws");
        repo_at(&ws, None);
        assert!(exclude_log_dir(&ws, "logs/loop").expect("exclude"));
        assert!(!exclude_log_dir(&ws, "./logs/loop/").expect("again"));
        assert_eq!(exclude_of(&ws).lines().last(), Some("/logs/loop/"));
        assert_eq!(exclude_of(&ws).matches("/logs/loop/").count(), 1);
        for outside in ["../logs", "/tmp/elsewhere", ".", ".git/logs"] {
            assert!(!exclude_log_dir(&ws, outside).expect(outside), "{outside}");
        }
        let abs = ws.join("out/a*b");
        assert!(exclude_log_dir(&ws, &abs.to_string_lossy()).expect("absolute"));
        assert!(exclude_of(&ws).ends_with("/out/a\\*b/\n"));

        let ignored = tmp.path().join("ignored");
        repo_at(&ignored, Some("logs/\n"));
        assert!(!exclude_log_dir(&ignored, "logs/loop").expect("ignored"));
        assert!(!exclude_of(&ignored).contains("/logs/loop/"));
    }

    #[test]
    fn glob_characters_and_trailing_spaces_are_literal() {
        assert_eq!(escape("logs/loop"), "logs/loop");
        assert_eq!(escape("a[1]?/b\\ "), "a\\[1]\\?/b\\\\\\ ");
    }
}
