//! A fresh Postgres database per test, dropped when the guard goes.
//!
//! The server: `LOOPD_TEST_PG` (an admin URL) when set; else the local server on
//! 127.0.0.1:5432 when one answers; else a throwaway cluster this code starts itself with
//! `initdb`/`pg_ctl` under `target/tmp/loopd-test-pg` (port 55432), shared by all test binaries
//! and left running for the next `cargo test` (stop it with `pg_ctl -D <dir> stop`).

use diesel::pg::PgConnection;
use diesel::prelude::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const OWN_PORT: u16 = 55432;

/// The admin URL tests connect with to create and drop databases.
pub fn admin_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(u) = std::env::var("LOOPD_TEST_PG") {
            return u;
        }
        if PgConnection::establish(DEFAULT).is_ok() {
            return DEFAULT.to_string();
        }
        start_own_cluster()
    })
    .clone()
}

fn pg_bin(name: &str) -> PathBuf {
    for dir in [
        "/usr/lib/postgresql/17/bin",
        "/usr/lib/postgresql/16/bin",
        "/usr/lib/postgresql/15/bin",
    ] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Runs a Postgres tool, as the `postgres` user when we are root (initdb refuses root).
fn pg_tool(name: &str, args: &[&str]) -> std::process::Output {
    let bin = pg_bin(name);
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    cmd.args(args).output().unwrap_or_else(|e| {
        panic!(
            "no Postgres to test against: nothing answers at {DEFAULT} and `{}` cannot run ({e}).\n\
             Install PostgreSQL (initdb, pg_ctl) or point LOOPD_TEST_PG at a server.",
            bin.display()
        )
    })
}

fn start_own_cluster() -> String {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("loopd-test-pg");
    std::fs::create_dir_all(&root).expect("create the test cluster directory");
    // One starter at a time across test binaries.
    let lock = std::fs::File::create(root.join("start.lock")).expect("lock file");
    lock.lock().expect("lock the test cluster");
    let data = root.join("data");
    let sock = root.join("sock");
    std::fs::create_dir_all(&sock).expect("socket directory");
    if is_root() {
        let _ = Command::new("chown")
            .args(["-R", "postgres"])
            .arg(&root)
            .status();
    }
    let (d, s) = (
        data.to_string_lossy().to_string(),
        sock.to_string_lossy().to_string(),
    );
    if !data.join("PG_VERSION").exists() {
        let out = pg_tool(
            "initdb",
            &["-D", &d, "-U", "postgres", "-A", "trust", "--no-sync"],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let status = pg_tool("pg_ctl", &["-D", &d, "status"]);
    if !status.status.success() {
        let opts = format!("-p {OWN_PORT} -k {s} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=400");
        let out = pg_tool(
            "pg_ctl",
            &[
                "-D",
                &d,
                "-w",
                "-l",
                &format!("{d}/../server.log"),
                "-o",
                &opts,
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    drop(lock);
    format!("postgres://postgres@127.0.0.1:{OWN_PORT}/postgres")
}

/// A database that exists for the life of this value.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub fn create() -> TestDb {
        let admin = admin_url();
        let mut c = PgConnection::establish(&admin).unwrap_or_else(|e| {
            panic!("cannot reach the test Postgres at {admin}: {e} (set LOOPD_TEST_PG)")
        });
        let name = format!("loopd_test_{}", uuid::Uuid::new_v4().simple());
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut c)
            .expect("create test database");
        let base = admin
            .rsplit_once('/')
            .map(|(b, _)| b.to_string())
            .unwrap_or(admin.clone());
        TestDb {
            url: format!("{base}/{name}"),
            name,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut c) = PgConnection::establish(&admin_url()) {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut c);
        }
    }
}

/// A private Postgres cluster for tests that stop and restart the server under a running
/// controller (the shared server must not be touched). Stopped and removed on drop.
pub struct OwnCluster {
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl OwnCluster {
    pub fn start() -> OwnCluster {
        let dir = tempfile::tempdir().expect("cluster dir");
        if is_root() {
            let _ = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir.path())
                .status();
        }
        let port = super::free_port();
        let c = OwnCluster { dir, port };
        let data = c.data();
        let out = pg_tool(
            "initdb",
            &["-D", &data, "-U", "postgres", "-A", "trust", "--no-sync"],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        c.resume();
        c
    }

    fn data(&self) -> String {
        self.dir.path().join("data").to_string_lossy().to_string()
    }

    /// The admin URL of this cluster.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A URL for database `name` (the controller creates it on first start).
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Starts the server (again).
    pub fn resume(&self) {
        let sock = self.dir.path().to_string_lossy().to_string();
        let opts = format!(
            "-p {} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port
        );
        let log = format!("{sock}/server.log");
        let out = pg_tool(
            "pg_ctl",
            &["-D", &self.data(), "-w", "-l", &log, "-o", &opts, "start"],
        );
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the server at once (`-m immediate`: like a crash).
    pub fn stop(&self) {
        let out = pg_tool(
            "pg_ctl",
            &["-D", &self.data(), "-w", "-m", "immediate", "stop"],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = pg_tool(
            "pg_ctl",
            &["-D", &self.data(), "-w", "-m", "immediate", "stop"],
        );
    }
}
