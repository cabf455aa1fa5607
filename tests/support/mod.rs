//! Shared test support: real `loopd` processes, a fresh Postgres database per test, an
//! in-process S3 server, git repositories with a spec and a plan driven by the fake agent, and
//! waiting on conditions with a deadline (never bare sleeps).
//!
//! Include from a test binary with `#[path = "../support/mod.rs"] mod support;`.

#![allow(dead_code)] // each test binary uses a different part of it

pub mod audit;
pub mod git_https;
pub mod pg;
pub mod pool;
pub mod proc;
pub mod provider;
pub mod repo;
pub mod s3;
pub mod sshd;

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` every 25 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The fake agent script (see tests/fixtures/fake-agent.sh).
pub fn fake_agent() -> String {
    format!(
        "{}/tests/fixtures/fake-agent.sh",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// A test's directory under target/tmp: removed when the test passes, kept (and its path
/// printed) when it fails, for the logs of the processes it ran.
pub struct TestDir(Option<tempfile::TempDir>);

impl TestDir {
    pub fn path(&self) -> &std::path::Path {
        self.0.as_ref().map(|d| d.path()).expect("test dir")
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(d) = self.0.take() {
                eprintln!("test files kept in {}", d.keep().display());
            }
        }
    }
}

/// Where a test keeps its files.
pub fn test_dir(name: &str) -> TestDir {
    let base = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("loopd-tests");
    std::fs::create_dir_all(&base).expect("test base dir");
    TestDir(Some(
        tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir_in(base)
            .expect("test dir"),
    ))
}

/// The pids a `hang` agent wrote into its workspace (its shell and the `sleep` it started),
/// once the file is complete.
pub async fn hang_pids(workspace: &std::path::Path) -> Vec<i32> {
    let file = workspace.join(".hang.pids");
    let what = format!("{} to be written", file.display());
    let file = &file;
    wait_for(&what, Duration::from_secs(30), || async move {
        let text = std::fs::read_to_string(file).ok()?;
        let pids: Vec<i32> = text
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        (pids.len() == 2).then_some(pids)
    })
    .await
}

/// True while a process with this pid exists and has not exited (a zombie or a dead task
/// counts as gone).
pub fn alive(pid: i32) -> bool {
    !matches!(proc_state(pid).as_deref(), Some("Z" | "X") | None)
}

/// The state of a process as `/proc/<pid>/stat` gives it (`R`, `S`, `T` stopped, `Z`, …), or
/// `None` when there is no such process.
pub fn proc_state(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().next().map(str::to_string)
}

/// Opens the SQLite file of a running daemon. The daemon may hold the write lock at that moment
/// (a heartbeat, a log line), so this waits for it like loopd's own connections do, instead of
/// failing at once with "database is locked".
pub fn open_live_sqlite(path: &std::path::Path) -> diesel::SqliteConnection {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    let mut c = diesel::SqliteConnection::establish(&path.to_string_lossy())
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    c.batch_execute("PRAGMA busy_timeout = 10000;")
        .expect("set busy_timeout");
    c
}
