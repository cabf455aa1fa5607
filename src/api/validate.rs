//! Checks of request bodies that need nothing but the body: sizes, counts and characters of
//! the create-run and register requests, the normalisation of `config_override` (the server
//! never reads a path a request names), and which command or path keys a run request sets.
//! Pure; the HTTP handlers call them before messaging an actor.

use super::{Capabilities, ConfigOverride, CreateRunRequest, RegisterRequest};
use crate::domain::run_config::{names_command, parse_kv, ConfigError};
use crate::domain::text::is_plain;
use crate::domain::WorkspaceSource;

/// Longest run name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Most labels on a run or a worker.
pub const MAX_LABELS: usize = 32;
/// Longest label, in bytes.
pub const MAX_LABEL_BYTES: usize = 64;
/// Largest `config_override` (its text, or its JSON), in bytes.
pub const MAX_OVERRIDE_BYTES: usize = 64 << 10;
/// Longest worker instance id, in characters.
pub const MAX_INSTANCE_ID_CHARS: usize = 128;

/// A refused request body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// Malformed or out of bounds (400).
    #[error("{0}")]
    Request(String),
    /// Too large (413).
    #[error("{0}")]
    TooLarge(String),
}

fn bad(msg: impl Into<String>) -> Invalid {
    Invalid::Request(msg.into())
}

/// A run label: 1-64 letters, digits, `-`, `_` or `.`.
fn valid_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= MAX_LABEL_BYTES
        && l.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Checks a create-run request and turns a text `config_override` into the object it
/// means, so that what follows never sees text.
pub fn create_run(req: &mut CreateRunRequest) -> Result<(), Invalid> {
    if let Some(name) = &req.name {
        if name.chars().count() > MAX_NAME_CHARS {
            return Err(bad(format!(
                "name must be at most {MAX_NAME_CHARS} characters"
            )));
        }
        if !is_plain(name) {
            return Err(bad(
                "name must not contain control characters, bidirectional overrides or U+FFFD",
            ));
        }
    }
    if let Some(labels) = &req.labels {
        if labels.len() > MAX_LABELS {
            return Err(bad(format!("a run may have at most {MAX_LABELS} labels")));
        }
        if let Some(l) = labels.iter().find(|l| !valid_label(l)) {
            return Err(bad(format!(
                "invalid label '{}': use 1-{MAX_LABEL_BYTES} letters, digits, '-', '_' or '.'",
                l.escape_default()
            )));
        }
    }
    let source = req.workspace_source.unwrap_or(if req.repo_url.is_some() {
        WorkspaceSource::Git
    } else {
        WorkspaceSource::SharedFs
    });
    let root = req.workspace_root.trim();
    if source == WorkspaceSource::SharedFs && !root.is_empty() && !root.starts_with('/') {
        return Err(bad(format!(
            "workspace_root must be an absolute path for a shared_fs run: {}",
            req.workspace_root.escape_default()
        )));
    }
    if let Some(o) = req.config_override.take() {
        req.config_override = Some(ConfigOverride::Object(override_object(o)?));
    }
    Ok(())
}

/// A `config_override` as a JSON object: an object as given, a string holding a JSON object,
/// or `key=value` text. Never a path: the CLI reads its local file and sends the contents.
fn override_object(
    o: ConfigOverride,
) -> Result<serde_json::Map<String, serde_json::Value>, Invalid> {
    let size = match &o {
        ConfigOverride::Text(t) => t.len(),
        ConfigOverride::Object(m) => serde_json::to_string(m).map_or(usize::MAX, |s| s.len()),
    };
    if size > MAX_OVERRIDE_BYTES {
        return Err(Invalid::TooLarge(format!(
            "config_override is larger than {MAX_OVERRIDE_BYTES} bytes"
        )));
    }
    let text = match o {
        ConfigOverride::Object(m) => return plain_keys(m),
        ConfigOverride::Text(t) => t,
    };
    if text.trim_start().starts_with('{') {
        let m = serde_json::from_str(&text)
            .map_err(|e| bad(format!("config_override is not a JSON object: {e}")))?;
        return plain_keys(m);
    }
    let pairs = parse_kv(&text).map_err(|e| match e {
        ConfigError::InvalidLine { line, .. } => bad(format!(
            "config_override line {line} is not key=value: send a JSON object or the key=value \
             text itself (the server reads no files; `loopd run --config FILE` sends FILE's \
             contents)"
        )),
        other => bad(other.to_string()),
    })?;
    plain_keys(
        pairs
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect(),
    )
}

/// Config keys are `snake_case` words; anything else (a path with a `=` in it, say) is
/// refused rather than ignored as an unknown key.
fn plain_keys(
    m: serde_json::Map<String, serde_json::Value>,
) -> Result<serde_json::Map<String, serde_json::Value>, Invalid> {
    let plain = |k: &str| {
        !k.is_empty()
            && k.len() <= 64
            && k.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    match m.keys().find(|k| !plain(k)) {
        Some(_) => Err(bad(
            "config_override keys are config keys like reviewer or iterations (snake_case); \
             the server reads no files: send a file's contents",
        )),
        None => Ok(m),
    }
}

/// The keys of a (checked) create-run request that name commands or paths: those of its
/// `config_override` and the `worktree_path_template` field.
pub fn command_keys(req: &CreateRunRequest) -> Vec<String> {
    let mut keys: Vec<String> = match &req.config_override {
        Some(ConfigOverride::Object(m)) => m.keys().filter(|k| names_command(k)).cloned().collect(),
        // `create_run` turned text into an object; text here names nothing it checked.
        Some(ConfigOverride::Text(_)) | None => Vec::new(),
    };
    if req.worktree_path_template.is_some() {
        keys.push("worktree_path_template".into());
    }
    keys.sort();
    keys.dedup();
    keys
}

/// Checks a registration (the registry checks the rest: hostname, slots, version).
pub fn register(req: &RegisterRequest) -> Result<(), Invalid> {
    if let Some(i) = &req.instance_id {
        let plain = i.chars().all(|c| c.is_ascii_graphic());
        if i.is_empty() || i.chars().count() > MAX_INSTANCE_ID_CHARS || !plain {
            return Err(bad(format!(
                "instance_id must be 1-{MAX_INSTANCE_ID_CHARS} visible ASCII characters"
            )));
        }
    }
    capabilities(&req.capabilities)
}

fn capabilities(c: &Capabilities) -> Result<(), Invalid> {
    if c.labels.len() > MAX_LABELS {
        return Err(bad(format!(
            "a worker may have at most {MAX_LABELS} labels"
        )));
    }
    if c.labels
        .iter()
        .any(|l| l.is_empty() || l.len() > MAX_LABEL_BYTES || !is_plain(l) || l.contains(','))
    {
        return Err(bad(format!(
            "labels must be 1-{MAX_LABEL_BYTES} printable characters without commas"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
