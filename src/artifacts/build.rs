//! Turns `[artifacts]` settings into an opendal `Operator`: an `fs` root directory or an `s3`
//! bucket. Called only by `ArtifactStore::from_settings`. Credentials go into the builder and
//! nowhere else (never into `location`, which is what logs and `Debug` show).

use super::ArtifactError;
use crate::domain::StoreKind;
use crate::settings::{ArtifactSettings, ArtifactStoreType};
use opendal::layers::TimeoutLayer;
use opendal::{services, Operator};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Sub-directory of the fs root where files are written before being renamed into place,
/// so a reader never sees half an artifact. Keys all start with `runs/`, so it cannot clash.
const FS_PARTIAL_DIR: &str = ".partial";

/// A store's operator and a secret-free description of where it writes.
pub(crate) struct Built {
    pub op: Operator,
    pub kind: StoreKind,
    pub location: String,
}

/// Builds the operator for `settings`; the fs root defaults to `<data_dir>/artifacts` and is
/// created. Sync (it may create a directory): call it at startup.
pub(crate) fn build(settings: &ArtifactSettings, data_dir: &Path) -> Result<Built, ArtifactError> {
    let built = match settings.kind {
        ArtifactStoreType::Fs => fs(settings, data_dir)?,
        ArtifactStoreType::S3 => s3(settings)?,
    };
    // A black-holed endpoint must fail the attempt (and let the retry loop act) rather than
    // hang the step forever. The io timeout bounds each chunk read or written.
    let op = built.op.layer(
        TimeoutLayer::new()
            .with_timeout(Duration::from_secs(60))
            .with_io_timeout(Duration::from_secs(60)),
    );
    Ok(Built { op, ..built })
}

fn fs(settings: &ArtifactSettings, data_dir: &Path) -> Result<Built, ArtifactError> {
    let root: PathBuf = settings
        .root
        .clone()
        .unwrap_or_else(|| data_dir.join("artifacts"));
    let partial = root.join(FS_PARTIAL_DIR);
    std::fs::create_dir_all(&partial).map_err(|e| {
        ArtifactError::Config(format!(
            "cannot create the artifact directory {}: {e}",
            root.display()
        ))
    })?;
    let builder = services::Fs::default()
        .root(&path_str(&root)?)
        .atomic_write_dir(&path_str(&partial)?);
    Ok(Built {
        op: Operator::new(builder).map_err(config_error)?,
        kind: StoreKind::Fs,
        location: format!("fs:{}", root.display()),
    })
}

fn s3(settings: &ArtifactSettings) -> Result<Built, ArtifactError> {
    let bucket = non_empty(settings.bucket.as_deref()).ok_or_else(|| {
        ArtifactError::Config("artifacts.type = \"s3\" needs artifacts.bucket".into())
    })?;
    let root = s3_root(&settings.prefix);
    let mut b = services::S3::default().bucket(bucket).root(&root);
    if !settings.region.is_empty() {
        b = b.region(&settings.region);
    }
    let endpoint = non_empty(settings.endpoint.as_deref());
    if let Some(endpoint) = endpoint {
        // An S3-compatible server is not on EC2: probing the metadata service only adds a
        // timeout when credentials come from the environment.
        b = b.endpoint(endpoint).disable_ec2_metadata();
    }
    let key_id = settings.access_key_id.as_ref().map(|s| s.expose());
    let secret = settings.secret_access_key.as_ref().map(|s| s.expose());
    match (non_empty(key_id), non_empty(secret)) {
        (Some(id), Some(secret)) => {
            // Keys given in settings are the only credentials: no AWS_* env, no ~/.aws files.
            b = b
                .access_key_id(id)
                .secret_access_key(secret)
                .disable_config_load()
                .disable_ec2_metadata();
        }
        (None, None) => {} // the usual AWS_* environment and profile files
        _ => {
            return Err(ArtifactError::Config(
                "artifacts.access_key_id and artifacts.secret_access_key must be set together"
                    .into(),
            ))
        }
    }
    Ok(Built {
        op: Operator::new(b).map_err(config_error)?,
        kind: StoreKind::S3,
        location: format!(
            "s3://{bucket}{root} at {}",
            endpoint.unwrap_or("the AWS default endpoint")
        ),
    })
}

/// The bucket-relative root for a prefix: `""` → `/`, `a/b` or `/a/b/` → `/a/b/`.
fn s3_root(prefix: &str) -> String {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        "/".into()
    } else {
        format!("/{trimmed}/")
    }
}

fn non_empty(s: Option<&str>) -> Option<&str> {
    s.filter(|s| !s.is_empty())
}

fn path_str(p: &Path) -> Result<String, ArtifactError> {
    p.to_str().map(str::to_string).ok_or_else(|| {
        ArtifactError::Config(format!("artifact root {} is not valid UTF-8", p.display()))
    })
}

fn config_error(e: opendal::Error) -> ArtifactError {
    ArtifactError::Config(format!("cannot set up the artifact store: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_become_directory_roots() {
        assert_eq!(s3_root(""), "/");
        assert_eq!(s3_root("/"), "/");
        assert_eq!(s3_root("loopd"), "/loopd/");
        assert_eq!(s3_root("/a/b/"), "/a/b/");
    }
}
