//! Credentials of git hosts, resolved per host when a git command needs them: the
//! `[[git.credentials]]` entry whose host matches the URL (password read from its file or
//! environment variable at that moment, so rotated tokens are picked up), or a credential the
//! controller handed to a worker with an assignment. Nothing resolved here is logged or stored;
//! secrets stay in [`Secret`]s until the git command's environment.

use super::failure::Cause;
use super::url::{RemoteUrl, Scheme};
use crate::api::HandedCredential;
use crate::settings::{GitCredential, Secret};
use std::path::PathBuf;

/// What a git command uses for one host.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    /// https: username and password, given to git by an inline credential helper.
    pub https: Option<(String, Secret)>,
    /// ssh: a key file and its passphrase.
    pub ssh_key: Option<(PathBuf, Option<Secret>)>,
}

/// The configured entry for `url`: `host:port` entries before plain `host` ones.
pub fn entry_for<'a>(entries: &'a [GitCredential], url: &RemoteUrl) -> Option<&'a GitCredential> {
    let with_port = url.port.map(|p| format!("{}:{p}", url.host));
    let host_of = |c: &GitCredential| c.host.trim().to_ascii_lowercase();
    entries
        .iter()
        .find(|c| with_port.as_deref() == Some(host_of(c).as_str()))
        .or_else(|| entries.iter().find(|c| host_of(c) == url.host))
}

/// Resolves what the settings (or a handed credential, which wins for https) give for `url`.
pub fn resolve(
    entries: &[GitCredential],
    handed: Option<&HandedCredential>,
    url: &RemoteUrl,
) -> Result<Resolved, Cause> {
    let mut out = Resolved::default();
    if url.scheme == Scheme::File {
        return Ok(out);
    }
    if let Some(h) = handed.filter(|h| h.host.eq_ignore_ascii_case(&url.host)) {
        if matches!(url.scheme, Scheme::Https | Scheme::Http) {
            out.https = Some((h.username.clone(), Secret::new(h.password.clone())));
            return Ok(out);
        }
    }
    let Some(entry) = entry_for(entries, url) else {
        return Ok(out);
    };
    match url.scheme {
        Scheme::Https | Scheme::Http => {
            if let Some(password) = password(entry)? {
                let user = entry.username.clone().unwrap_or_else(|| "git".into());
                out.https = Some((user, password));
            }
        }
        Scheme::Ssh => {
            if let Some(key) = &entry.ssh_key_file {
                let passphrase = match &entry.ssh_key_passphrase_file {
                    Some(f) => Some(read_secret(f, "ssh_key_passphrase_file", &entry.host)?),
                    None => None,
                };
                out.ssh_key = Some((key.clone(), passphrase));
            }
        }
        Scheme::File => {}
    }
    Ok(out)
}

/// The https credential the controller may hand to a worker for `url`.
pub fn handed_for(
    entries: &[GitCredential],
    url: &RemoteUrl,
) -> Result<Option<HandedCredential>, Cause> {
    if !matches!(url.scheme, Scheme::Https | Scheme::Http) {
        return Ok(None);
    }
    let resolved = resolve(entries, None, url)?;
    Ok(resolved.https.map(|(username, password)| HandedCredential {
        host: url.host.clone(),
        username,
        password: password.expose().to_string(),
    }))
}

fn password(entry: &GitCredential) -> Result<Option<Secret>, Cause> {
    if let Some(f) = &entry.password_file {
        return read_secret(f, "password_file", &entry.host).map(Some);
    }
    if let Some(var) = &entry.password_env {
        return match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(Some(Secret::new(v))),
            _ => Err(Cause::Credential(format!(
                "the environment variable {var} named by [[git.credentials]] password_env is not set"
            ))),
        };
    }
    Ok(None)
}

/// A secret file's first line (trailing newline removed).
fn read_secret(path: &PathBuf, what: &str, host: &str) -> Result<Secret, Cause> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Cause::Credential(format!(
            "cannot read {what} {} of [[git.credentials]] for {host}: {}",
            path.display(),
            e.kind()
        ))
    })?;
    Ok(Secret::new(text.lines().next().unwrap_or("").to_string()))
}
