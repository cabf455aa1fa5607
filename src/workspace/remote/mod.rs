//! Talking to git remotes (https, ssh, file): which URLs are accepted and allowed, which
//! credential a host gets, and the network operations themselves — clone, fetch and push —
//! run by the `git` program so that a user's git setup (credential helpers, `~/.ssh/config`,
//! ssh-agent, proxies, trust store) works as it does in their shell. Everything else about
//! repositories stays in-process (git2). Network failures are retried with backoff here; a
//! refused credential or host key is not. Used by the controller's mirrors (fetch, push) and
//! the worker's clone (fetch). Blocking: callers put it on a blocking thread.

mod access;
mod command;
pub mod credentials;
mod failure;
pub mod url;

pub use access::Access;
pub use command::ASKPASS_SECRET_ENV;
pub use failure::{classify, Cause, Op, RemoteError};
pub use url::{redact, RemoteUrl, Scheme};

use crate::api::HandedCredential;
use crate::settings::{GitCredential, GitSettings, WorkerCredentials};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The configured access to git remotes; cheap to clone.
#[derive(Debug, Clone)]
pub struct Remotes {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    access: Access,
    credentials: Vec<GitCredential>,
    setup: command::Setup,
    attempts: u32,
    backoff: Duration,
    push_run_branch: bool,
    hand_credentials: bool,
}

impl Remotes {
    /// Remotes as `[git]` configures them.
    pub fn from_settings(git: &GitSettings) -> Remotes {
        let access = Access::new(&git.allowed_schemes, &git.allowed_hosts, &git.file_roots);
        let protocols = access
            .schemes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(":");
        let setup = command::Setup {
            protocols,
            follow_redirects: access.any_host(),
            known_hosts: git.known_hosts.clone(),
            accept_new_host_keys: git.accept_new_host_keys,
            ca_file: git.ca_file.clone(),
            timeout: Duration::from_secs(git.timeout_sec.max(1)),
            askpass: std::env::current_exe().ok(),
        };
        Remotes {
            inner: Arc::new(Inner {
                access,
                credentials: git.credentials.clone(),
                setup,
                attempts: git.network_attempts.max(1),
                backoff: Duration::from_millis(git.retry_backoff_ms),
                push_run_branch: git.push_run_branch,
                hand_credentials: git.worker_credentials == WorkerCredentials::FromController,
            }),
        }
    }

    /// Whether a completed git run's branch is pushed to its remote (`git.push_run_branch`).
    pub fn push_run_branch(&self) -> bool {
        self.inner.push_run_branch
    }

    /// Whether the controller hands its https credential to workers with assignments.
    pub fn hand_credentials(&self) -> bool {
        self.inner.hand_credentials
    }

    /// Parses `text` and checks it against the allow-lists (before anything is fetched).
    pub fn check(&self, text: &str) -> Result<RemoteUrl, RemoteError> {
        let url = parse(text)?;
        self.inner.access.check(&url).map_err(|why| RemoteError {
            op: Op::Fetch,
            host: url.host_label(),
            cause: Cause::NotAllowed(why),
        })?;
        Ok(url)
    }

    /// The https credential the controller hands to workers for `url`, if it has one.
    pub fn handed_credential(
        &self,
        url: &RemoteUrl,
    ) -> Result<Option<HandedCredential>, RemoteError> {
        credentials::handed_for(&self.inner.credentials, url).map_err(|cause| RemoteError {
            op: Op::Fetch,
            host: url.host_label(),
            cause,
        })
    }

    /// Runs `git <args>` (in `dir`) for `url`, again after network failures with a doubling
    /// backoff, up to `git.network_attempts` times. Returns git's stdout.
    pub fn run(
        &self,
        dir: Option<&Path>,
        url: &RemoteUrl,
        op: Op,
        handed: Option<&HandedCredential>,
        args: &[&str],
    ) -> Result<String, RemoteError> {
        self.run_cleaning(dir, url, op, handed, args, &|| {})
    }

    /// [`Self::run`], calling `clean` before each attempt (a `git clone` killed at its
    /// deadline leaves its half-made directory, which the next attempt must not find).
    pub fn run_cleaning(
        &self,
        dir: Option<&Path>,
        url: &RemoteUrl,
        op: Op,
        handed: Option<&HandedCredential>,
        args: &[&str],
        clean: &dyn Fn(),
    ) -> Result<String, RemoteError> {
        let creds =
            credentials::resolve(&self.inner.credentials, handed, url).map_err(|cause| {
                RemoteError {
                    op,
                    host: url.host_label(),
                    cause,
                }
            })?;
        let mut wait = self.inner.backoff;
        let mut attempt = 1;
        loop {
            clean();
            match command::run(&self.inner.setup, dir, url, op, &creds, args) {
                Ok(out) => return Ok(out.stdout),
                Err(e) if e.retryable() && attempt < self.inner.attempts => {
                    tracing::info!(host = %e.host, attempt, class = e.class(), "git network failure: trying again");
                    std::thread::sleep(wait);
                    wait = wait.saturating_mul(2);
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Parses a URL without checking the allow-lists (a worker runs what its controller assigned).
pub fn parse(text: &str) -> Result<RemoteUrl, RemoteError> {
    RemoteUrl::parse(text).map_err(|e| RemoteError {
        op: Op::Fetch,
        host: String::new(),
        cause: Cause::BadUrl(e.0),
    })
}
