//! The artifact store: logs, bundles and other files a run produces, kept in an `fs`
//! directory or an `s3` bucket (behind opendal): a step's files under the prefix of the lease
//! that made them, `runs/<run_id>/steps/<step_id>/<epoch>/<name>`, the controller's own under
//! `runs/<run_id>/<name>`; the `artifacts` table says which object a name is now. Uploads
//! are retried with backoff; downloads stream. Callers: the step executor and the HTTP
//! artifact handlers (which must pass names through [`validate_name`] first, or use [`put`]
//! which checks them again).
//!
//! [`put`]: ArtifactStore::put

mod build;
mod error;
mod names;
mod retry;
pub mod run_logs;

pub use error::ArtifactError;
pub use names::{artifact_key, attempt_key, validate_name, MAX_NAME_BYTES};

use crate::domain::StoreKind;
use crate::settings::ArtifactSettings;
use bytes::{Bytes, BytesMut};
use error::store_error;
use futures_util::{Stream, TryStreamExt};
use names::validate_key;
use opendal::Operator;
use retry::{AttemptError, RetryPolicy};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// Bytes buffered per request when uploading a file (S3 multipart parts must be ≥ 5 MiB).
const WRITE_CHUNK: usize = 8 << 20;
/// Bytes read from a local file (and hashed) at a time.
const READ_CHUNK: usize = 1 << 20;
/// Above this size `put` hashes on the blocking pool rather than on the async thread.
const INLINE_HASH_MAX: usize = 1 << 20;

/// Where an artifact was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Store key, `runs/<run_id>/<name>` (relative to the s3 prefix).
    pub key: String,
    pub size: u64,
    /// Lower-case hex SHA-256 of the content.
    pub sha256: String,
}

/// A handle on the configured store; cheap to clone and share.
#[derive(Clone)]
pub struct ArtifactStore {
    op: Operator,
    kind: StoreKind,
    location: String,
    retry: RetryPolicy,
}

impl fmt::Debug for ArtifactStore {
    // By hand: the operator's own Debug is not ours to vouch for, credentials must not leak.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArtifactStore")
            .field("kind", &self.kind)
            .field("location", &self.location)
            .field("upload_attempts", &self.retry.attempts)
            .field("retry_backoff", &self.retry.base)
            .finish()
    }
}

impl ArtifactStore {
    /// Builds the store from `[artifacts]`: `fs` at `root` (default `<data_dir>/artifacts`,
    /// created) or `s3` (bucket, endpoint, region, prefix; keys from settings, else AWS_*
    /// environment). Contacts nothing: a store that is down shows up on first use.
    pub fn from_settings(
        settings: &ArtifactSettings,
        data_dir: &Path,
    ) -> Result<Self, ArtifactError> {
        let built = build::build(settings, data_dir)?;
        Ok(ArtifactStore {
            op: built.op,
            kind: built.kind,
            location: built.location,
            retry: RetryPolicy {
                attempts: settings.upload_attempts.max(1),
                base: Duration::from_millis(settings.retry_backoff_ms),
            },
        })
    }

    /// Which kind of store this is.
    pub fn kind(&self) -> StoreKind {
        self.kind
    }

    /// Stores `bytes` as artifact `name` of run `run_id`, replacing an earlier one; retried.
    pub async fn put(
        &self,
        run_id: &str,
        name: &str,
        bytes: Bytes,
    ) -> Result<Stored, ArtifactError> {
        self.put_key(&artifact_key(run_id, name)?, bytes).await
    }

    /// Stores `bytes` under `key` (one [`artifact_key`] or [`attempt_key`] made); retried.
    pub async fn put_key(&self, key: &str, bytes: Bytes) -> Result<Stored, ArtifactError> {
        names::validate_key(key)?;
        let key = key.to_string();
        let sha256 = sha256_hex(bytes.clone()).await;
        let size = bytes.len() as u64;
        self.retry
            .run(&key, || async {
                self.op.write(&key, bytes.clone()).await?;
                Ok(())
            })
            .await?;
        tracing::debug!(key, size, "artifact stored");
        Ok(Stored { key, size, sha256 })
    }

    /// Stores the file at `path` as artifact `name` of run `run_id`, streaming it in chunks
    /// (never whole in memory); each retry reads the file again from the start.
    pub async fn put_file(
        &self,
        run_id: &str,
        name: &str,
        path: &Path,
    ) -> Result<Stored, ArtifactError> {
        let key = artifact_key(run_id, name)?;
        let (size, sha256) = self
            .retry
            .run(&key, || self.upload_file(&key, path))
            .await?;
        tracing::debug!(key, size, "artifact stored");
        Ok(Stored { key, size, sha256 })
    }

    async fn upload_file(&self, key: &str, path: &Path) -> Result<(u64, String), AttemptError> {
        let local = |e| {
            AttemptError::Final(ArtifactError::LocalFile {
                path: path.to_path_buf(),
                source: e,
            })
        };
        let mut file = tokio::fs::File::open(path).await.map_err(local)?;
        let mut writer = self.op.writer_with(key).chunk(WRITE_CHUNK).await?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let outcome = loop {
            let mut buf = BytesMut::with_capacity(READ_CHUNK);
            match file.read_buf(&mut buf).await {
                Ok(0) => break writer.close().await.map_err(AttemptError::Store),
                Ok(n) => {
                    hasher.update(&buf);
                    size += n as u64;
                    if let Err(e) = writer.write(buf.freeze()).await {
                        break Err(AttemptError::Store(e));
                    }
                }
                Err(e) => break Err(local(e)),
            }
        };
        if let Err(e) = outcome {
            // Best effort: drops a half-done multipart upload; the attempt's error is what counts.
            let _ = writer.abort().await;
            return Err(e);
        }
        Ok((size, hex::encode(hasher.finalize())))
    }

    /// Opens `key` for streaming: its size and a stream of its bytes, for a download that
    /// never holds the whole object. A missing key (or a "directory") is `NotFound`.
    pub async fn reader(
        &self,
        key: &str,
    ) -> Result<
        (
            u64,
            impl Stream<Item = Result<Bytes, ArtifactError>> + Send + 'static,
        ),
        ArtifactError,
    > {
        let size = self.object_size(key).await?;
        let stream = self
            .op
            .reader_with(key)
            .chunk(READ_CHUNK)
            .await
            .map_err(|e| store_error("read", key, e))?
            .into_bytes_stream(0..size)
            .await
            .map_err(|e| store_error("read", key, e))?;
        let owned = key.to_string();
        let stream = stream.map_err(move |source| ArtifactError::Read {
            key: owned.clone(),
            source,
        });
        Ok((size, stream))
    }

    /// The whole content of `key` (for small artifacts; use [`Self::reader`] for big ones).
    pub async fn get(&self, key: &str) -> Result<Bytes, ArtifactError> {
        self.object_size(key).await?;
        let buf = self
            .op
            .read(key)
            .await
            .map_err(|e| store_error("read", key, e))?;
        Ok(buf.to_bytes())
    }

    /// The size of the object at `key`; `NotFound` when there is none. A key that is only a
    /// "directory" (a prefix of other keys, like `runs/r/bundles`) counts as missing, which
    /// the fs backend and some S3 servers would otherwise report as odd internal errors.
    async fn object_size(&self, key: &str) -> Result<u64, ArtifactError> {
        validate_key(key)?;
        let meta = self
            .op
            .stat(key)
            .await
            .map_err(|e| store_error("stat", key, e))?;
        if meta.is_dir() {
            return Err(ArtifactError::NotFound { key: key.into() });
        }
        Ok(meta.content_length())
    }

    /// Removes `key`; removing a missing key succeeds.
    pub async fn delete(&self, key: &str) -> Result<(), ArtifactError> {
        validate_key(key)?;
        self.op
            .delete(key)
            .await
            .map_err(|e| store_error("delete", key, e))
    }
}

/// Hex SHA-256 of `bytes`, off the async thread when they are big.
async fn sha256_hex(bytes: Bytes) -> String {
    let hash = |b: &[u8]| hex::encode(Sha256::digest(b));
    if bytes.len() <= INLINE_HASH_MAX {
        return hash(&bytes);
    }
    let for_pool = bytes.clone();
    match tokio::task::spawn_blocking(move || hash(&for_pool)).await {
        Ok(h) => h,
        // The pool refused (runtime shutting down): finish the work here instead.
        Err(_) => hash(&bytes),
    }
}

#[cfg(test)]
mod tests;
