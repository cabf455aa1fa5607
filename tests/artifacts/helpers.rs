//! Fixtures: a store of either kind in its own temp dirs, captured logs, test data.

use crate::s3::S3Server;
use loopd::artifacts::ArtifactStore;
use loopd::settings::{ArtifactSettings, Settings};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A store and what keeps its backend alive.
pub struct TestStore {
    pub store: ArtifactStore,
    pub s3: Option<S3Server>,
    pub dir: tempfile::TempDir,
}

pub async fn fs_store() -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::default().artifacts;
    let store = ArtifactStore::from_settings(&settings, dir.path()).unwrap();
    TestStore {
        store,
        s3: None,
        dir,
    }
}

pub async fn s3_store() -> TestStore {
    let server = S3Server::start().await;
    s3_store_with(server, |_| {})
}

/// A store on `server` with settings adjusted by `tweak`.
pub fn s3_store_with(server: S3Server, tweak: impl FnOnce(&mut ArtifactSettings)) -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = server.settings();
    tweak(&mut settings);
    let store = ArtifactStore::from_settings(&settings, dir.path()).unwrap();
    TestStore {
        store,
        s3: Some(server),
        dir,
    }
}

/// `len` bytes that do not repeat with any short period, so a misplaced chunk shows.
pub fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x2545_f491;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

pub fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// Log lines written on this thread while the guard lives (tests run on a current-thread
/// runtime, so every task they spawn logs here too).
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    pub fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let sink = logs.0.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || LogWriter(sink.clone()))
            .with_ansi(false)
            .with_env_filter("loopd=debug")
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Polls `cond` until it holds; panics with `what` after `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every object file the backend holds, as sorted `/`-separated paths relative to the fs
/// root or the S3 bucket (the fs store's `.partial` scratch directory left out).
pub fn stored_files(t: &TestStore) -> Vec<String> {
    let root = match &t.s3 {
        Some(server) => server.bucket_dir(),
        None => t.dir.path().join("artifacts"),
    };
    let mut found = Vec::new();
    let mut todo = vec![root.clone()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if !path.ends_with(".partial") {
                    todo.push(path);
                }
            } else {
                let rel = path.strip_prefix(&root).unwrap();
                found.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    found.sort();
    found
}
