//! The `[auth]` rules of the settings: tokens read from files, the checks every token must
//! pass (length, characters, unique names and values), the rule that a runs API reachable
//! beyond loopback needs a client token, and the list of client tokens with their scopes
//! that the HTTP layer checks requests against. Called by `Settings::load` and `app.rs`.

use super::{err, Role, Secret, Settings, SettingsError};
use crate::domain::access::Scopes;
use std::path::Path;

/// Shortest accepted token, in characters.
pub const MIN_TOKEN_CHARS: usize = 16;

/// Longest token file read (a token is a line; anything bigger is not one).
const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// A client token the runs API accepts: its name (for logs; `default` for `auth.token`),
/// the secret and what it may do.
#[derive(Debug, Clone)]
pub struct ClientToken {
    pub name: String,
    pub secret: Secret,
    pub scopes: Scopes,
}

/// Reads a token from `path`: the file's text without surrounding whitespace. The error
/// names the file and the reason, never its content.
fn read_token(path: &Path, what: &str) -> Result<Secret, SettingsError> {
    let fail = |why: String| err(format!("{what} {}: {why}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| fail(e.kind().to_string()))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    if meta.len() > MAX_TOKEN_FILE_BYTES {
        return Err(fail(format!(
            "larger than {MAX_TOKEN_FILE_BYTES} bytes; it should hold one token"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.kind().to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(fail("the file is empty".into()));
    }
    Ok(Secret::new(token))
}

/// Fills `value` from `file` when one is given; both at once is a mistake.
fn from_file(
    value: &mut Option<Secret>,
    file: &Option<std::path::PathBuf>,
    key: &str,
) -> Result<(), SettingsError> {
    let Some(path) = file else {
        return Ok(());
    };
    if value.is_some() {
        return Err(err(format!(
            "set {key} or {key}_file, not both (an environment variable may have set {key})"
        )));
    }
    *value = Some(read_token(path, &format!("{key}_file"))?);
    Ok(())
}

/// A token is at least 16 visible ASCII characters (it travels in an HTTP header).
fn check_token(key: &str, t: &Secret) -> Result<(), SettingsError> {
    let s = t.expose();
    if s.chars().count() < MIN_TOKEN_CHARS || !s.chars().all(|c| c.is_ascii_graphic()) {
        return Err(err(format!(
            "{key} must be at least {MIN_TOKEN_CHARS} visible ASCII characters without spaces"
        )));
    }
    Ok(())
}

impl Settings {
    /// Replaces every `*_file` token setting by the file's content.
    pub(super) fn read_token_files(&mut self) -> Result<(), SettingsError> {
        let a = &mut self.auth;
        from_file(&mut a.token, &a.token_file, "auth.token")?;
        from_file(
            &mut a.worker_join_token,
            &a.worker_join_token_file,
            "auth.worker_join_token",
        )?;
        for t in &mut a.tokens {
            let key = format!("auth.tokens \"{}\": token", t.name);
            from_file(&mut t.token, &t.token_file, &key)?;
        }
        let w = &mut self.worker;
        from_file(&mut w.join_token, &w.join_token_file, "worker.join_token")
    }

    /// Whether the HTTP server listens on anything but a loopback address.
    pub fn binds_beyond_loopback(&self) -> bool {
        self.bind
            .parse::<std::net::SocketAddr>()
            .map_or(true, |a| !a.ip().is_loopback())
    }

    /// Whether a run request may name commands or paths without the `exec` scope:
    /// `auth.allow_request_commands`, else only a single host bound to loopback.
    pub fn request_commands_allowed(&self) -> bool {
        self.auth
            .allow_request_commands
            .unwrap_or(self.role == Role::Single && !self.binds_beyond_loopback())
    }

    /// Every client token with its scopes (empty: the runs API is open).
    pub fn client_tokens(&self) -> Vec<ClientToken> {
        let unnamed = self.auth.token.iter().map(|t| ClientToken {
            name: "default".into(),
            secret: t.clone(),
            scopes: Scopes::unnamed(),
        });
        let named = self.auth.tokens.iter().filter_map(|t| {
            Some(ClientToken {
                name: t.name.clone(),
                secret: t.token.clone()?,
                scopes: Scopes::of(&t.scopes),
            })
        });
        unnamed.chain(named).collect()
    }

    /// The `[auth]` checks: token shapes, names, and a client token wherever the runs API
    /// is reachable beyond loopback (unless explicitly allowed).
    pub(super) fn validate_auth(&self) -> Result<(), SettingsError> {
        let a = &self.auth;
        for (key, t) in [
            ("auth.token", &a.token),
            ("auth.worker_join_token", &a.worker_join_token),
            ("worker.join_token", &self.worker.join_token),
        ] {
            if let Some(t) = t {
                check_token(key, t)?;
            }
        }
        let mut names = std::collections::HashSet::new();
        for t in &a.tokens {
            let valid_name = !t.name.is_empty()
                && t.name.len() <= 64
                && t.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !valid_name {
                return Err(err(format!(
                    "auth.tokens name \"{}\" must be 1-64 letters, digits, '-', '_' or '.'",
                    t.name.escape_default()
                )));
            }
            if !names.insert(t.name.as_str()) || t.name == "default" {
                return Err(err(format!(
                    "auth.tokens name \"{}\" is used twice (\"default\" is auth.token's)",
                    t.name
                )));
            }
            let key = format!("auth.tokens \"{}\": token", t.name);
            match &t.token {
                Some(s) => check_token(&key, s)?,
                None => return Err(err(format!("{key} or token_file is required"))),
            }
            if t.scopes.is_empty() {
                return Err(err(format!(
                    "auth.tokens \"{}\": scopes must name at least one of read, submit, admin, exec",
                    t.name
                )));
            }
        }
        let all = self.client_tokens();
        for (i, t) in all.iter().enumerate() {
            if all[..i].iter().any(|o| o.secret == t.secret) {
                return Err(err(format!(
                    "client token \"{}\" has the same value as another token",
                    t.name
                )));
            }
        }
        let serves_runs_api = self.role != Role::Worker;
        if serves_runs_api
            && self.binds_beyond_loopback()
            && all.is_empty()
            && !a.allow_unauthenticated
        {
            return Err(err(format!(
                "bind = \"{}\" reaches beyond loopback and no client token is set: set \
                 auth.token_file, auth.token or LOOPD_AUTH_TOKEN (or [[auth.tokens]]), or \
                 set auth.allow_unauthenticated = true to let anyone who reaches the port in",
                self.bind
            )));
        }
        Ok(())
    }

    /// Serving the runs API beyond loopback with no client token (allowed explicitly).
    pub fn serves_unauthenticated_beyond_loopback(&self) -> bool {
        self.role != Role::Worker && self.binds_beyond_loopback() && self.client_tokens().is_empty()
    }
}

#[cfg(test)]
mod tests;
