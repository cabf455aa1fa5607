//! What only the S3 store does: honour the prefix, enforce credentials, and ride out (or give
//! up on) a server that goes away.

use crate::helpers::{pattern, s3_store_with, stored_files, wait_until, Logs};
use crate::s3::{S3Server, ACCESS_KEY, SECRET_KEY};
use bytes::Bytes;
use loopd::artifacts::ArtifactError;
use loopd::settings::Secret;
use std::time::{Duration, Instant};

#[tokio::test]
async fn objects_land_under_the_configured_prefix() {
    let t = s3_store_with(S3Server::start().await, |s| s.prefix = "/team/a/".into());
    let stored = t
        .store
        .put("run-1", "iter-01-impl.log", Bytes::from_static(b"hi"))
        .await
        .unwrap();
    assert_eq!(stored.key, "runs/run-1/iter-01-impl.log");
    assert_eq!(stored_files(&t), ["team/a/runs/run-1/iter-01-impl.log"]);
    assert_eq!(t.store.get(&stored.key).await.unwrap(), "hi");
}

#[tokio::test]
async fn a_wrong_secret_is_refused_by_the_server_and_not_retried() {
    let t = s3_store_with(S3Server::start().await, |s| {
        s.secret_access_key = Some(Secret::new("not-the-secret"));
        s.upload_attempts = 5;
    });
    let err = t
        .store
        .put("run-1", "x.log", Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("upload of runs/run-1/x.log failed after 1 attempt: "),
        "{msg}"
    );
    assert!(!msg.contains("not-the-secret"), "{msg}");
    assert!(stored_files(&t).is_empty());
}

#[tokio::test]
async fn with_the_server_stopped_put_retries_then_fails_and_works_again_after_a_restart() {
    let (logs, _guard) = Logs::capture();
    let mut t = s3_store_with(S3Server::start().await, |s| {
        s.upload_attempts = 3;
        s.retry_backoff_ms = 50;
    });
    let server = t.s3.as_mut().unwrap();
    server.stop().await;

    let started = Instant::now();
    let err = t
        .store
        .put("run-1", "x.log", Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    let took = started.elapsed();
    let msg = err.to_string();
    assert!(
        matches!(err, ArtifactError::Upload { attempts: 3, .. }),
        "{msg}"
    );
    assert!(
        msg.starts_with("upload of runs/run-1/x.log failed after 3 attempts: "),
        "{msg}"
    );
    assert!(
        msg.contains("Connection refused"),
        "the cause is missing: {msg}"
    );
    // Two pauses of at least 50 ms and 100 ms came between the three attempts.
    assert!(took >= Duration::from_millis(150), "no backoff: {took:?}");
    assert!(took < Duration::from_secs(15), "took {took:?}");

    let text = logs.text();
    assert!(text.contains("WARN"), "{text}");
    assert!(
        text.contains("attempt=1") && text.contains("attempt=2"),
        "{text}"
    );
    assert!(
        !text.contains("attempt=3"),
        "the last failure is the error, not a retry: {text}"
    );
    assert!(
        !text.contains(SECRET_KEY) && !text.contains(ACCESS_KEY),
        "{text}"
    );

    t.s3.as_mut().unwrap().restart().await;
    let stored = t
        .store
        .put("run-1", "x.log", Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!(t.store.get(&stored.key).await.unwrap(), "x");
}

#[tokio::test]
async fn an_upload_still_retrying_succeeds_once_the_server_is_back() {
    let (logs, _guard) = Logs::capture();
    let mut t = s3_store_with(S3Server::start().await, |s| {
        s.upload_attempts = 10;
        s.retry_backoff_ms = 50;
    });
    t.s3.as_mut().unwrap().stop().await;

    let store = t.store.clone();
    let data = Bytes::from(pattern(3 * 1024 * 1024));
    let upload = tokio::spawn({
        let data = data.clone();
        async move { store.put("run-1", "bundles/run.bundle", data).await }
    });
    wait_until("a failed first attempt", Duration::from_secs(10), || {
        logs.text().contains("attempt=1")
    })
    .await;
    t.s3.as_mut().unwrap().restart().await;

    let stored = upload.await.unwrap().unwrap();
    assert_eq!(stored.size, data.len() as u64);
    assert!(t.store.get(&stored.key).await.unwrap() == data);
}

#[tokio::test]
async fn a_file_upload_cut_off_by_a_server_crash_is_redone_after_the_restart() {
    let (logs, _guard) = Logs::capture();
    let mut t = s3_store_with(S3Server::start().await, |s| {
        s.upload_attempts = 10;
        s.retry_backoff_ms = 50;
    });
    let data = pattern(17 * 1024 * 1024);
    let path = t.dir.path().join("run.bundle");
    std::fs::write(&path, &data).unwrap();

    let store = t.store.clone();
    let upload = tokio::spawn(async move { store.put_file("run-1", "run.bundle", &path).await });
    let server_dir = t.s3.as_ref().unwrap().data_dir().to_path_buf();
    wait_until(
        "a multipart upload to open",
        Duration::from_secs(20),
        || multipart_upload_open(&server_dir),
    )
    .await;
    t.s3.as_mut().unwrap().stop().await;
    wait_until(
        "the cut-off attempt to fail",
        Duration::from_secs(20),
        || logs.text().contains("attempt=1"),
    )
    .await;
    t.s3.as_mut().unwrap().restart().await;

    let stored = upload.await.unwrap().unwrap();
    assert_eq!(stored.size, data.len() as u64);
    assert_eq!(stored.sha256, crate::helpers::sha256_hex(&data));
    assert!(t.store.get(&stored.key).await.unwrap() == data);
}

/// s3s-fs keeps `.upload-<id>.json` in its directory while a multipart upload is open.
fn multipart_upload_open(server_dir: &std::path::Path) -> bool {
    std::fs::read_dir(server_dir).unwrap().any(|e| {
        let name = e.unwrap().file_name();
        let name = name.to_string_lossy();
        name.starts_with(".upload-") && name.ends_with(".json")
    })
}
