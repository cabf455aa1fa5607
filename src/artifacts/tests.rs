//! The artifact store on the fs backend: writes, reads, checksums and bad names.

use super::error::with_causes;
use super::*;
use crate::settings::{ArtifactStoreType, Secret, Settings};

fn settings(kind: ArtifactStoreType) -> ArtifactSettings {
    ArtifactSettings {
        kind,
        ..Settings::default().artifacts
    }
}

fn s3_settings() -> ArtifactSettings {
    ArtifactSettings {
        bucket: Some("loopd".into()),
        endpoint: Some("http://127.0.0.1:9".into()),
        access_key_id: Some(Secret::new("AKIDVISIBLEID")),
        secret_access_key: Some(Secret::new("very-secret-key")),
        prefix: "team/a".into(),
        ..settings(ArtifactStoreType::S3)
    }
}

#[test]
fn the_fs_store_defaults_to_data_dir_artifacts_and_creates_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = ArtifactStore::from_settings(&settings(ArtifactStoreType::Fs), dir.path()).unwrap();
    assert_eq!(store.kind(), StoreKind::Fs);
    assert!(dir.path().join("artifacts").is_dir());
    assert!(format!("{store:?}").contains(&dir.path().join("artifacts").display().to_string()));
}

#[test]
fn the_fs_store_uses_the_configured_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("elsewhere/store");
    let s = ArtifactSettings {
        root: Some(root.clone()),
        ..settings(ArtifactStoreType::Fs)
    };
    ArtifactStore::from_settings(&s, &dir.path().join("data")).unwrap();
    assert!(root.is_dir());
    assert!(!dir.path().join("data/artifacts").exists());
}

#[test]
fn debug_output_of_an_s3_store_shows_where_but_not_the_credentials() {
    let store = ArtifactStore::from_settings(&s3_settings(), Path::new("/nonexistent")).unwrap();
    assert_eq!(store.kind(), StoreKind::S3);
    let debug = format!("{store:?}");
    assert!(debug.contains("s3://loopd/team/a/"), "{debug}");
    assert!(!debug.contains("very-secret-key"), "{debug}");
    assert!(!debug.contains("AKIDVISIBLEID"), "{debug}");
}

#[test]
fn s3_settings_without_a_bucket_or_with_half_the_keys_are_refused() {
    let no_bucket = ArtifactSettings {
        bucket: None,
        ..s3_settings()
    };
    let e = ArtifactStore::from_settings(&no_bucket, Path::new("/")).unwrap_err();
    assert!(e.to_string().contains("needs artifacts.bucket"), "{e}");

    let half = ArtifactSettings {
        secret_access_key: None,
        ..s3_settings()
    };
    let e = ArtifactStore::from_settings(&half, Path::new("/")).unwrap_err();
    assert!(e.to_string().contains("must be set together"), "{e}");
    assert!(!e.to_string().contains("AKIDVISIBLEID"), "{e}");
}

#[tokio::test]
async fn keys_from_outside_the_runs_tree_are_refused_before_touching_the_store() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret.txt"), "x").unwrap();
    let s = ArtifactSettings {
        root: Some(dir.path().join("root")),
        ..settings(ArtifactStoreType::Fs)
    };
    let store = ArtifactStore::from_settings(&s, dir.path()).unwrap();
    for key in [
        "../secret.txt",
        "runs/../../secret.txt",
        "runs/r/../../../secret.txt",
    ] {
        assert!(matches!(
            store.get(key).await,
            Err(ArtifactError::InvalidName { .. })
        ));
        assert!(matches!(
            store.delete(key).await,
            Err(ArtifactError::InvalidName { .. })
        ));
    }
    assert!(dir.path().join("secret.txt").exists());
}

#[tokio::test]
async fn sha256_is_the_same_inline_and_on_the_blocking_pool() {
    let small = Bytes::from_static(b"hello");
    assert_eq!(
        sha256_hex(small).await,
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    );
    let big = Bytes::from(vec![7u8; INLINE_HASH_MAX + 1]);
    assert_eq!(
        sha256_hex(big.clone()).await,
        hex::encode(Sha256::digest(&big))
    );
}

#[test]
fn error_text_carries_the_causes_the_top_error_hides() {
    #[derive(Debug, thiserror::Error)]
    #[error("error sending request")]
    struct Outer(#[source] std::io::Error);
    let e = Outer(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "Connection refused",
    ));
    assert_eq!(with_causes(&e), "error sending request: Connection refused");
}

#[test]
fn each_lease_of_a_step_has_its_own_keys_and_bad_parts_are_refused() {
    let a = attempt_key("run-1", "step-1", 1, "iter-01-impl.log").expect("key");
    let b = attempt_key("run-1", "step-1", 2, "iter-01-impl.log").expect("key");
    assert_eq!(a, "runs/run-1/steps/step-1/1/iter-01-impl.log");
    assert_ne!(a, b, "a later lease never writes over an earlier one");
    assert!(names::validate_key(&a).is_ok());
    assert!(attempt_key("run-1", "a/b", 1, "x.log").is_err());
    assert!(attempt_key("run-1", "step-1", 1, "../x.log").is_err());
    assert!(attempt_key("run-1", "", 1, "x.log").is_err());
}
