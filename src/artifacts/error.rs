//! `ArtifactError`, the artifact store's one error type, and how opendal errors map onto it.
//! Used by the other `artifacts` modules; callers outside only match on the variants.

use std::path::PathBuf;

/// What can go wrong with an artifact.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The name (or run id, or key) could reach outside `runs/<run_id>/`.
    #[error("invalid artifact name \"{name}\": {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// The `[artifacts]` settings cannot make a store.
    #[error("artifact store configuration: {0}")]
    Config(String),
    /// No object under this key.
    #[error("artifact {key} not found")]
    NotFound { key: String },
    /// Every upload attempt failed (or one failed in a way another cannot fix).
    #[error("upload of {key} failed after {attempts} {}: {}", attempts_word(*.attempts), with_causes(.source))]
    Upload {
        key: String,
        attempts: u32,
        source: Box<opendal::Error>,
    },
    /// The local file to upload could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    LocalFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A read, stat or delete failed.
    #[error("{op} of {key} failed: {}", with_causes(.source))]
    Store {
        op: &'static str,
        key: String,
        source: Box<opendal::Error>,
    },
    /// A download broke off mid-stream.
    #[error("reading {key} failed: {source}")]
    Read { key: String, source: std::io::Error },
}

/// The error and every cause under it that its text does not already show: an opendal error
/// stops at "error sending request", the useful "Connection refused" is two causes down.
pub(crate) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

fn attempts_word(n: u32) -> &'static str {
    if n == 1 {
        "attempt"
    } else {
        "attempts"
    }
}

/// Maps an opendal error on `key`, turning "no such object" into [`ArtifactError::NotFound`].
pub(crate) fn store_error(op: &'static str, key: &str, e: opendal::Error) -> ArtifactError {
    match e.kind() {
        opendal::ErrorKind::NotFound | opendal::ErrorKind::IsADirectory => {
            ArtifactError::NotFound { key: key.into() }
        }
        _ => ArtifactError::Store {
            op,
            key: key.into(),
            source: Box::new(e),
        },
    }
}
