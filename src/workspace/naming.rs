//! Names and paths of run worktrees: the slug of a run name and the expansion of the worktree
//! path template (REFERENCE §5.2). Pure functions, used by the worktree planner and by callers
//! that need to show a planned path.

use std::path::{Component, Path, PathBuf};

/// The path template used when the configuration names none: a sibling of the workspace,
/// `<parent>/<repo>.run-<slug>`.
pub const DEFAULT_PATH_TEMPLATE: &str = "../{{ repo }}.{{ run_branch | sanitize }}";

/// ASCII alphanumerics lowercased, every other character `-`, runs of `-` collapsed and leading
/// and trailing `-` removed: `my_feature` → `my-feature`. May be empty.
pub fn slug(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    out
}

/// Expands `{{ repo }}` (basename of `workspace_root`), `{{ run_branch | sanitize }}` and
/// `{{ branch | sanitize }}` (run branch with `/` → `-`) and `{{ run_branch }}` /
/// `{{ branch }}` (raw), each also without the inner spaces. A relative result is joined to
/// `workspace_root`; the path is then normalized lexically (`.` and `..` resolved).
pub fn expand_path_template(template: &str, workspace_root: &Path, run_branch: &str) -> PathBuf {
    let repo = workspace_root
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let sanitized = run_branch.replace('/', "-");
    let mut expanded = template.to_string();
    // Sanitized forms first: `{{ run_branch }}` is not a substring of them, but keep the
    // order explicit so a future form cannot shadow another.
    for (key, value) in [
        ("repo", repo.as_str()),
        ("run_branch | sanitize", sanitized.as_str()),
        ("branch | sanitize", sanitized.as_str()),
        ("run_branch", run_branch),
        ("branch", run_branch),
    ] {
        expanded = expanded
            .replace(&format!("{{{{ {key} }}}}"), value)
            .replace(&format!("{{{{{key}}}}}"), value);
    }
    let path = Path::new(&expanded);
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        workspace_root.join(path)
    };
    normalize(&joined)
}

/// Resolves `.` and `..` without touching the file system.
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slug_lowercases_and_collapses_separators() {
        assert_eq!(slug("my_feature"), "my-feature");
        assert_eq!(slug("  Fix: the BUG!! (v2) "), "fix-the-bug-v2");
        assert_eq!(slug("été"), "t");
        assert_eq!(slug("---"), "");
    }

    #[test]
    fn default_template_is_a_sibling_of_the_workspace() {
        let path = expand_path_template(DEFAULT_PATH_TEMPLATE, Path::new("/src/app"), "run/x-y");
        assert_eq!(path, PathBuf::from("/src/app.run-x-y"));
    }

    #[test]
    fn template_forms_with_and_without_spaces_expand() {
        let root = Path::new("/w/repo");
        let path =
            expand_path_template("{{repo}}/{{branch}}/{{run_branch | sanitize}}", root, "a/b");
        assert_eq!(path, PathBuf::from("/w/repo/repo/a/b/a-b"));
        let path =
            expand_path_template("/tmp/{{ branch | sanitize }}.{{ run_branch }}", root, "a/b");
        assert_eq!(path, PathBuf::from("/tmp/a-b.a/b"));
        let path = expand_path_template("./x/../../{{run_branch | sanitize}}", root, "r/1");
        assert_eq!(path, PathBuf::from("/w/r-1"));
    }
}
