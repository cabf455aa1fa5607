//! The client verbs of the `loopd` binary against a real `loopd --role single` daemon (one per
//! test, own data dir): readable tables, `--json` that parses, downloads that match their
//! checksum, and one `error: …` line with exit status 1 when something is wrong.

#[path = "../support/mod.rs"]
mod support;

mod errors;
mod git;
mod health;
#[path = "../distributed/proxy.rs"]
mod proxy;
mod resume;
mod review;
mod verbs;

use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use support::proc::{bin, Loopd};
use support::repo::Repo;
use support::{test_dir, wait_for};

/// What one client invocation did.
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(&self) -> &str {
        assert_eq!(
            self.code,
            Some(0),
            "client failed: {}{}",
            self.stdout,
            self.stderr
        );
        &self.stdout
    }

    fn json(&self) -> Value {
        serde_json::from_str(self.ok())
            .unwrap_or_else(|e| panic!("--json output does not parse ({e}): {}", self.stdout))
    }

    /// The one `error: …` line of a failed invocation (exit status 1).
    fn error_line(&self) -> String {
        assert_eq!(
            self.code,
            Some(1),
            "exit status 1: {}{}",
            self.stdout,
            self.stderr
        );
        let errors: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect();
        assert_eq!(errors.len(), 1, "one error line: {}", self.stderr);
        assert!(
            self.stderr
                .lines()
                .all(|l| l.starts_with("error:") || l.starts_with("waiting for daemon")),
            "nothing but the error (and the probe's waiting lines): {}",
            self.stderr
        );
        errors[0].to_string()
    }
}

/// A daemon and where its client runs.
struct Env {
    dir: crate::support::TestDir,
    daemon: Loopd,
}

impl Env {
    async fn start(name: &str, env: &[(&str, &str)]) -> Env {
        let dir = test_dir(name);
        let mut env = env.to_vec();
        env.push(("LOOPD__SCHEDULER__TICK_INTERVAL_MS", "100"));
        let daemon = Loopd::spawn(&dir.path().join("data"), &["--role", "single"], &env);
        daemon.wait_ready("/health").await;
        Env { dir, daemon }
    }

    /// Runs `loopd <args>` in `cwd` against this daemon, with `env` added.
    async fn client_with(&self, cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Out {
        client(&self.daemon.url(), cwd, args, env).await
    }

    async fn client(&self, cwd: &Path, args: &[&str]) -> Out {
        self.client_with(cwd, args, &[]).await
    }

    async fn status(&self, id: &str) -> String {
        let v: Value = reqwest::get(format!("{}/runs/{id}", self.daemon.url()))
            .await
            .expect("GET")
            .json()
            .await
            .expect("JSON");
        v["run"]["status"].as_str().unwrap_or_default().to_string()
    }

    async fn wait_status(&self, id: &str, want: &str) {
        let what = format!("run {id} to be {want} ({})", self.daemon.log.display());
        wait_for(&what, Duration::from_secs(30), || async {
            (self.status(id).await == want).then_some(())
        })
        .await
    }

    /// Submits a run of `repo` through the CLI; its id.
    async fn submit(&self, repo: &Repo) -> String {
        let v = self
            .client(&repo.path, &["run", "--json", "specs/demo.md", "PLAN.md"])
            .await
            .json();
        v["run"]["id"].as_str().expect("run id").to_string()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // SIGTERM: the daemon kills the agents it runs before it goes.
        if self.daemon.child.is_some() {
            self.daemon.signal(nix::sys::signal::Signal::SIGTERM);
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            while let Some(Ok(None)) = self.daemon.child.as_mut().map(|c| c.try_wait()) {
                if std::time::Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

async fn client(addr: &str, cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Out {
    let out = tokio::process::Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .env("LOOPD_ADDR", addr)
        .env_remove("LOOPD_TOKEN")
        .env_remove("LOOPD_READY_TIMEOUT_MS")
        .envs(env.iter().copied())
        .output()
        .await
        .expect("run the client");
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

/// The header words of the table at the start of `text`.
fn header(text: &str) -> Vec<String> {
    text.lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}
