//! Behaviour every store kind must share. Each test below runs twice: `…::on_fs` and `…::on_s3`.

use crate::helpers::{fs_store, pattern, s3_store, sha256_hex, stored_files, TestStore};
use bytes::Bytes;
use futures_util::TryStreamExt;
use loopd::artifacts::{validate_name, ArtifactError};
use loopd::domain::StoreKind;

macro_rules! on_both_stores {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test]
            async fn on_fs() {
                let t = super::fs_store().await;
                assert_eq!(t.store.kind(), super::StoreKind::Fs);
                super::$test(t).await;
            }
            #[tokio::test]
            async fn on_s3() {
                let t = super::s3_store().await;
                assert_eq!(t.store.kind(), super::StoreKind::S3);
                super::$test(t).await;
            }
        }
    )*};
}

on_both_stores!(
    put_then_get_returns_the_bytes_with_their_size_and_sha256,
    a_multi_megabyte_object_streams_back_unchanged,
    an_empty_artifact_streams_back_empty,
    an_overwritten_artifact_reads_back_the_new_content,
    a_missing_object_is_not_found,
    a_deleted_object_is_gone_and_deleting_again_is_fine,
    put_file_uploads_a_file_of_several_chunks_and_hashes_it,
    put_file_of_a_missing_local_file_names_the_file,
    put_refuses_names_that_could_escape_the_run_and_accepts_plain_ones,
);

async fn put_then_get_returns_the_bytes_with_their_size_and_sha256(t: TestStore) {
    let stored = t
        .store
        .put("run-1", "iter-01-impl.log", Bytes::from_static(b"hello"))
        .await
        .unwrap();
    assert_eq!(stored.key, "runs/run-1/iter-01-impl.log");
    assert_eq!(stored.size, 5);
    assert_eq!(
        stored.sha256,
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    );
    assert_eq!(t.store.get(&stored.key).await.unwrap(), "hello");
}

async fn a_multi_megabyte_object_streams_back_unchanged(t: TestStore) {
    let data = pattern(5 * 1024 * 1024 + 123);
    let stored = t
        .store
        .put("run-1", "bundles/run.bundle", Bytes::from(data.clone()))
        .await
        .unwrap();
    assert_eq!(stored.sha256, sha256_hex(&data));

    let (size, stream) = t.store.reader(&stored.key).await.unwrap();
    assert_eq!(size, data.len() as u64);
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    assert!(
        chunks.len() > 1,
        "a 5 MiB object should arrive in several chunks"
    );
    assert!(
        chunks.concat() == data,
        "streamed bytes differ from the stored ones"
    );
}

async fn an_empty_artifact_streams_back_empty(t: TestStore) {
    let stored = t
        .store
        .put("run-1", "empty.txt", Bytes::new())
        .await
        .unwrap();
    assert_eq!(stored.size, 0);
    let (size, stream) = t.store.reader(&stored.key).await.unwrap();
    assert_eq!(size, 0);
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    assert!(chunks.concat().is_empty());
}

async fn an_overwritten_artifact_reads_back_the_new_content(t: TestStore) {
    let first = Bytes::from_static(b"the first, longer version");
    t.store.put("run-1", "report.md", first).await.unwrap();
    let stored = t
        .store
        .put("run-1", "report.md", Bytes::from_static(b"v2"))
        .await
        .unwrap();
    assert_eq!(stored.size, 2);
    assert_eq!(t.store.get(&stored.key).await.unwrap(), "v2");
    let (size, _) = t.store.reader(&stored.key).await.unwrap();
    assert_eq!(size, 2);
}

fn not_found<T>(r: &Result<T, ArtifactError>) -> bool {
    matches!(r, Err(ArtifactError::NotFound { .. }))
}

async fn a_missing_object_is_not_found(t: TestStore) {
    let key = "runs/run-1/nope.log";
    let r = t.store.get(key).await;
    assert!(not_found(&r), "{r:?}");
    let r = t.store.reader(key).await.map(|(n, _)| n);
    assert!(not_found(&r), "{r:?}");

    // A "directory" made by a nested name is not an artifact either. Only checked on fs:
    // s3s-fs answers HEAD on such a key with a 500 where real S3 answers 404.
    t.store
        .put("run-1", "bundles/run.bundle", Bytes::from_static(b"b"))
        .await
        .unwrap();
    if t.s3.is_none() {
        let key = "runs/run-1/bundles";
        let r = t.store.get(key).await;
        assert!(not_found(&r), "{r:?}");
        let r = t.store.reader(key).await.map(|(n, _)| n);
        assert!(not_found(&r), "{r:?}");
    }
}

async fn a_deleted_object_is_gone_and_deleting_again_is_fine(t: TestStore) {
    let stored = t
        .store
        .put("run-1", "x.log", Bytes::from_static(b"x"))
        .await
        .unwrap();
    t.store.delete(&stored.key).await.unwrap();
    assert!(matches!(
        t.store.get(&stored.key).await,
        Err(ArtifactError::NotFound { .. })
    ));
    t.store.delete(&stored.key).await.unwrap();
}

async fn put_file_uploads_a_file_of_several_chunks_and_hashes_it(t: TestStore) {
    // Bigger than two 8 MiB parts, so S3 takes the multipart path.
    let data = pattern(17 * 1024 * 1024 + 5);
    let path = t.dir.path().join("iter-03-impl.log");
    std::fs::write(&path, &data).unwrap();

    let stored = t
        .store
        .put_file("run-2", "iter-03-impl.log", &path)
        .await
        .unwrap();
    assert_eq!(stored.key, "runs/run-2/iter-03-impl.log");
    assert_eq!(stored.size, data.len() as u64);
    assert_eq!(stored.sha256, sha256_hex(&data));
    let back = t.store.get(&stored.key).await.unwrap();
    assert!(
        back == data,
        "downloaded file differs from the uploaded one"
    );
}

async fn put_file_of_a_missing_local_file_names_the_file(t: TestStore) {
    let path = t.dir.path().join("never-written.log");
    let err = t
        .store
        .put_file("run-2", "never-written.log", &path)
        .await
        .unwrap_err();
    assert!(matches!(err, ArtifactError::LocalFile { .. }), "{err}");
    assert!(err.to_string().contains("never-written.log"), "{err}");
}

async fn put_refuses_names_that_could_escape_the_run_and_accepts_plain_ones(t: TestStore) {
    let long = "a".repeat(256);
    for name in [
        "../x",
        "/abs",
        "a//b",
        "a/./b",
        "a\\b",
        "nul\0",
        long.as_str(),
    ] {
        assert!(validate_name(name).is_err(), "{name:?} passed validation");
        let r = t
            .store
            .put("run-1", name, Bytes::from_static(b"evil"))
            .await;
        assert!(
            matches!(r, Err(ArtifactError::InvalidName { .. })),
            "{name:?} was not refused: {r:?}"
        );
    }
    assert!(matches!(
        t.store.put("../run", "x", Bytes::new()).await,
        Err(ArtifactError::InvalidName { .. })
    ));
    assert_eq!(
        stored_files(&t),
        Vec::<String>::new(),
        "a refused put wrote something"
    );
    for name in ["iter-01-impl.log", "bundles/run.bundle"] {
        validate_name(name).unwrap();
        let stored = t
            .store
            .put("run-1", name, Bytes::from_static(b"ok"))
            .await
            .unwrap();
        assert_eq!(t.store.get(&stored.key).await.unwrap(), "ok");
    }
    assert_eq!(
        stored_files(&t),
        [
            "runs/run-1/bundles/run.bundle",
            "runs/run-1/iter-01-impl.log"
        ]
    );
}
