//! A git remote's URL as loopd accepts it: `https://`, `http://`, `ssh://`, scp-like
//! `user@host:path`, `file://` or an absolute local path. A URL that carries a password is
//! refused (credentials belong in settings), and one that could be read as a command-line
//! option or names another transport (`ext::`, `git://`, …) never parses. Used by the access
//! check, the git command runner and the run submission.

use std::fmt;
use std::path::PathBuf;

/// The transport a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Https,
    Http,
    Ssh,
    File,
}

impl Scheme {
    /// The name used in settings (`git.allowed_schemes`) and in `GIT_ALLOW_PROTOCOL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Https => "https",
            Scheme::Http => "http",
            Scheme::Ssh => "ssh",
            Scheme::File => "file",
        }
    }

    pub fn parse(s: &str) -> Option<Scheme> {
        match s {
            "https" => Some(Scheme::Https),
            "http" => Some(Scheme::Http),
            "ssh" | "git+ssh" | "ssh+git" => Some(Scheme::Ssh),
            "file" => Some(Scheme::File),
            _ => None,
        }
    }
}

/// A parsed remote URL without a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteUrl {
    text: String,
    pub scheme: Scheme,
    /// Host name (lower case), empty for local repositories.
    pub host: String,
    pub port: Option<u16>,
    /// Local repositories: the path.
    pub path: Option<PathBuf>,
}

/// Why a URL was refused (the message never repeats a password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UrlError(pub String);

impl RemoteUrl {
    /// Parses `text`; see the module header for what is accepted.
    pub fn parse(text: &str) -> Result<RemoteUrl, UrlError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(UrlError("repo_url is empty".into()));
        }
        if text.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(UrlError(
                "repo_url must not contain spaces or control characters".into(),
            ));
        }
        if text.starts_with('-') {
            return Err(UrlError("repo_url must not start with '-'".into()));
        }
        if text.starts_with('/') {
            return Ok(RemoteUrl {
                text: text.to_string(),
                scheme: Scheme::File,
                host: String::new(),
                port: None,
                path: Some(PathBuf::from(text)),
            });
        }
        match text.split_once("://") {
            Some((scheme, _)) => Self::parse_url(text, scheme),
            None => Self::parse_scp(text),
        }
    }

    fn parse_url(text: &str, scheme: &str) -> Result<RemoteUrl, UrlError> {
        let scheme = Scheme::parse(&scheme.to_ascii_lowercase()).ok_or_else(|| {
            UrlError(format!(
                "repo_url scheme \"{scheme}\" is not supported: use https://, ssh://, user@host:path or file://"
            ))
        })?;
        let url = url::Url::parse(text)
            .map_err(|e| UrlError(format!("repo_url {} is not a URL: {e}", redact(text))))?;
        if url.password().is_some() {
            return Err(UrlError(format!(
                "repo_url {} holds a password: put the credential in [[git.credentials]] or a git credential helper instead",
                redact(text)
            )));
        }
        if scheme == Scheme::File {
            if url
                .host_str()
                .is_some_and(|h| !h.is_empty() && h != "localhost")
            {
                return Err(UrlError("file:// URLs must not name a host".into()));
            }
            let path = url
                .to_file_path()
                .map_err(|_| UrlError(format!("repo_url {text} is not a local path")))?;
            return Ok(RemoteUrl {
                text: text.to_string(),
                scheme,
                host: String::new(),
                port: None,
                path: Some(path),
            });
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| UrlError(format!("repo_url {text} names no host")))?;
        check_host(host)?;
        Ok(RemoteUrl {
            text: text.to_string(),
            scheme,
            host: host.trim_matches(['[', ']']).to_ascii_lowercase(),
            port: url.port(),
            path: None,
        })
    }

    /// `[user@]host:path` (git's scp-like syntax: a colon before any slash).
    fn parse_scp(text: &str) -> Result<RemoteUrl, UrlError> {
        let unsupported = || {
            UrlError(format!(
                "repo_url {} is not supported: use https://, ssh://, user@host:path, file:// or an absolute path",
                redact(text)
            ))
        };
        let (left, path) = text.split_once(':').ok_or_else(unsupported)?;
        if left.contains('/') || path.starts_with(':') || path.is_empty() {
            return Err(unsupported());
        }
        // `user:password@host:path` reads as host "user": refuse anything password-like.
        if path
            .split(['/', ':'])
            .next()
            .is_some_and(|p| p.contains('@'))
        {
            return Err(UrlError(
                "repo_url holds a password: put the credential in [[git.credentials]] or ssh-agent instead"
                    .into(),
            ));
        }
        let host = left.rsplit_once('@').map_or(left, |(_, h)| h);
        if host.is_empty() {
            return Err(unsupported());
        }
        check_host(host)?;
        Ok(RemoteUrl {
            text: text.to_string(),
            scheme: Scheme::Ssh,
            host: host.trim_matches(['[', ']']).to_ascii_lowercase(),
            port: None,
            path: None,
        })
    }

    /// The URL as given (what git is handed and what a run stores).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// What `gh --repo` takes for this remote, `OWNER/REPO` (`HOST/OWNER/REPO` for another
    /// host than github.com, e.g. a GitHub Enterprise server): the path's two segments, without
    /// `.git`; the port is left out (an ssh port is not the web's). `None` for a local
    /// repository or a path of another shape, which no GitHub serves.
    pub fn gh_repo(&self) -> Option<String> {
        let path = match self.scheme {
            Scheme::File => return None,
            _ => match self.text.split_once("://") {
                Some(_) => url::Url::parse(&self.text).ok()?.path().to_string(),
                None => self.text.split_once(':')?.1.to_string(),
            },
        };
        let path = path.trim_matches('/');
        let path = path.strip_suffix(".git").unwrap_or(path);
        let (owner, repo) = path.split_once('/')?;
        let plain = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !plain(owner) || !plain(repo) {
            return None;
        }
        match self.host.as_str() {
            "github.com" | "www.github.com" | "ssh.github.com" => Some(format!("{owner}/{repo}")),
            host => Some(format!("{host}/{owner}/{repo}")),
        }
    }

    /// `host` or `host:port` (a local repository's path), for messages.
    pub fn host_label(&self) -> String {
        match (self.scheme, self.port) {
            (Scheme::File, _) => self
                .path
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            (_, Some(p)) => format!("{}:{p}", self.host),
            _ => self.host.clone(),
        }
    }
}

impl fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn check_host(host: &str) -> Result<(), UrlError> {
    if host.starts_with('-') {
        return Err(UrlError("a repo_url host must not start with '-'".into()));
    }
    Ok(())
}

/// `text` with the password of any `scheme://user:password@` removed, for messages about
/// strings that may not parse.
pub fn redact(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority
        .rsplit_once('@')
        .and_then(|(userinfo, host)| Some((userinfo.split_once(':')?.0, host)))
    {
        Some((user, host)) => format!("{scheme}://{user}:***@{host}{tail}"),
        None => text.to_string(),
    }
}
