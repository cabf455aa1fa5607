//! Which remotes the controller may fetch (issue "safe by default"): the URL's scheme must be in
//! `git.allowed_schemes`, its host must match `git.allowed_hosts`, and a local repository must
//! lie inside one of `git.file_roots`. Checked before any git command sees the URL; a refusal
//! says "not allowed" and why, and nothing is fetched.

use super::url::{RemoteUrl, Scheme};
use std::path::{Path, PathBuf};

/// The allow-lists of `[git]`.
#[derive(Debug, Clone)]
pub struct Access {
    pub schemes: Vec<Scheme>,
    /// Lower-case patterns: `*`, `*.example.com`, `host` or `host:port`.
    pub hosts: Vec<String>,
    /// Canonical directories.
    pub file_roots: Vec<PathBuf>,
}

impl Access {
    /// Builds the lists from settings values (unknown schemes are dropped: settings validated
    /// them already; roots that do not exist cannot hold a repository and are dropped too).
    pub fn new(schemes: &[String], hosts: &[String], file_roots: &[PathBuf]) -> Access {
        Access {
            schemes: schemes.iter().filter_map(|s| Scheme::parse(s)).collect(),
            hosts: hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
            file_roots: file_roots
                .iter()
                .filter_map(|r| r.canonicalize().ok())
                .collect(),
        }
    }

    /// Whether any host is allowed (then redirects to other hosts change nothing).
    pub fn any_host(&self) -> bool {
        self.hosts.iter().any(|h| h == "*")
    }

    /// `Ok` when `url` may be fetched, else the reason it may not.
    pub fn check(&self, url: &RemoteUrl) -> Result<(), String> {
        if !self.schemes.contains(&url.scheme) {
            return Err(format!(
                "{} URLs are not allowed here (git.allowed_schemes)",
                url.scheme.as_str()
            ));
        }
        if url.scheme == Scheme::File {
            let path = url.path.as_deref().unwrap_or(Path::new(""));
            return self.check_path(path);
        }
        let with_port = url.port.map(|p| format!("{}:{p}", url.host));
        let matches = |pattern: &str| {
            pattern == "*"
                || pattern == url.host
                || with_port.as_deref() == Some(pattern)
                || pattern
                    .strip_prefix("*.")
                    .is_some_and(|domain| url.host.ends_with(&format!(".{domain}")))
        };
        if !self.hosts.iter().any(|p| matches(p)) {
            return Err(format!(
                "host {} is not allowed here (git.allowed_hosts)",
                url.host_label()
            ));
        }
        Ok(())
    }

    fn check_path(&self, path: &Path) -> Result<(), String> {
        let refused = || "local repositories are allowed only inside git.file_roots".to_string();
        if self.file_roots.is_empty() {
            return Err(refused());
        }
        let inside = |p: &Path| self.file_roots.iter().any(|root| p.starts_with(root));
        match path.canonicalize() {
            Ok(real) if inside(&real) => Ok(()),
            Ok(_) => Err(refused()),
            // A missing path is judged by its words (git then says "not found"), so the answer
            // never tells which paths exist outside the roots.
            Err(_) if path.is_absolute() && !has_parent_dir(path) && inside(path) => Ok(()),
            Err(_) => Err(refused()),
        }
    }
}

fn has_parent_dir(path: &Path) -> bool {
    path.components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
}
