//! Real `loopd` processes for multi-process tests: started from the built binary with their
//! own data dir and port, logs in a file, killed with real signals, reaped on drop.

use super::{free_port, wait_for};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// The `loopd` binary cargo built for these tests.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_loopd")
}

/// A running `loopd` daemon (any role).
pub struct Loopd {
    pub child: Option<Child>,
    pub port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// The address it listens on (default 127.0.0.1).
    pub host: String,
    /// A command the process is started under (e.g. `ip netns exec NS`).
    pub wrapper: Vec<String>,
}

impl Loopd {
    /// Starts `loopd <args>` with `--bind 127.0.0.1:<port> --data-dir <dir>` added, the given
    /// environment (on top of a clean one: PATH, HOME) and logs at debug level into `dir`.
    pub fn spawn(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Loopd {
        Self::spawn_on(dir, free_port(), args, env)
    }

    pub fn spawn_on(dir: &Path, port: u16, args: &[&str], env: &[(&str, &str)]) -> Loopd {
        Self::spawn_custom(dir, "127.0.0.1", port, &[], args, env)
    }

    /// Like `spawn_on`, but listening on `host` and started under `wrapper` (may be empty,
    /// e.g. `["ip", "netns", "exec", "ns1"]`).
    pub fn spawn_custom(
        dir: &Path,
        host: &str,
        port: u16,
        wrapper: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Loopd {
        let data_dir = dir.to_path_buf();
        std::fs::create_dir_all(&data_dir).expect("data dir");
        let mut l = Loopd {
            child: None,
            port,
            log: data_dir.join("loopd.log"),
            data_dir,
            args: args.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            host: host.into(),
            wrapper: wrapper.iter().map(|s| s.to_string()).collect(),
        };
        l.start();
        l
    }

    /// (Re)starts the process with the same arguments, port and data dir.
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut cmd = match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        cmd.args(&self.args)
            .arg("--bind")
            .arg(format!("{}:{}", self.host, self.port))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(
                "HOME",
                std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()),
            )
            .env(
                "RUST_LOG",
                std::env::var("LOOPD_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            // The tests' repositories are local: allowed where tests keep their files.
            .env("LOOPD__GIT__FILE_ROOTS", test_file_roots())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn loopd"));
    }

    pub fn url(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    /// Starts another process with the same arguments and environment (another controller on
    /// the same database), with a data dir of its own (`dir`, logging into `dir/loopd.log`)
    /// and a port of its own.
    pub fn sibling(&self, dir: &Path) -> Loopd {
        std::fs::create_dir_all(dir).expect("data dir");
        let mut l = Loopd {
            child: None,
            port: free_port(),
            data_dir: dir.to_path_buf(),
            log: dir.join("loopd.log"),
            args: self.args.clone(),
            env: self.env.clone(),
            host: self.host.clone(),
            wrapper: self.wrapper.clone(),
        };
        l.start();
        l
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).expect("signal loopd");
    }

    /// Waits for `path` (e.g. `/ready`) to answer 200, or panics with the log's tail.
    pub async fn wait_ready(&self, path: &str) {
        let url = format!("{}{path}", self.url());
        let client = reqwest::Client::new();
        let log = self.log.clone();
        let what = format!("{url} (log: {})", log.display());
        wait_for(&what, Duration::from_secs(30), || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                match client.get(&url).send().await {
                    Ok(r) if r.status().is_success() => Some(()),
                    _ => None,
                }
            }
        })
        .await;
    }

    /// Waits (with a deadline) for the process to exit and returns its status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let status = wait_for("loopd to exit", timeout, || {
            let s = child.try_wait().expect("try_wait");
            async move { s }
        })
        .await;
        self.child = None;
        status
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The log so far (for assertions and failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Where the tests keep repositories (`git.file_roots` of every test daemon).
pub fn test_file_roots() -> String {
    format!(
        "{},{}",
        env!("CARGO_TARGET_TMPDIR"),
        std::env::temp_dir().display()
    )
}

impl Drop for Loopd {
    fn drop(&mut self) {
        self.kill9();
    }
}
