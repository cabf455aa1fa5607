//! The `[git]` section: which remotes the controller may fetch (`allowed_schemes`,
//! `allowed_hosts`, `file_roots`), the credentials of git hosts (`[[git.credentials]]`), host
//! keys and CAs, whether a finished run's branch is pushed, how workers get credentials, and the
//! network timeouts and retries of git commands. Read by `app` to build the workspace's
//! `Remotes`; nothing here holds a secret itself (passwords live in files or the environment).

use super::{err, SettingsError};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// How a worker authenticates to a git host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerCredentials {
    /// Each worker uses its own git setup (its settings, credential helper, ssh-agent, keys).
    Own,
    /// The controller hands its https credential for the run's host to the worker with each
    /// assignment; the worker keeps it in memory for that step only (ssh stays the worker's own).
    FromController,
}

/// One git host's credentials. `password_file` / `password_env` hold an https password or
/// token; `ssh_key_file` (+ `ssh_key_passphrase_file`) an ssh key. Unset fields fall back to
/// what git itself finds (credential helper, ssh-agent, `~/.ssh`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitCredential {
    /// Host name as it appears in repo URLs (`git.example.com`; `host:port` to match one port).
    pub host: String,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Name of an environment variable holding the password or token.
    pub password_env: Option<String>,
    pub ssh_key_file: Option<PathBuf>,
    pub ssh_key_passphrase_file: Option<PathBuf>,
}

/// Missing keys take their defaults (empty lists do not survive the layering).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GitSettings {
    /// URL schemes a run's `repo_url` may use: `https`, `ssh`, `file`, `http`.
    pub allowed_schemes: Vec<String>,
    /// Hosts a run's `repo_url` may name: exact names, `*.example.com`, or `*` for any.
    pub allowed_hosts: Vec<String>,
    /// `file://` URLs and local paths are allowed only inside these directories.
    pub file_roots: Vec<PathBuf>,
    /// Push a completed git run's branch to its remote.
    pub push_run_branch: bool,
    /// ssh host keys are checked against this file (default: ssh's own, `~/.ssh/known_hosts`).
    pub known_hosts: Option<PathBuf>,
    /// Accept and remember the key of an ssh host seen for the first time.
    pub accept_new_host_keys: bool,
    /// CA certificates (PEM) trusted for https remotes instead of the system store.
    pub ca_file: Option<PathBuf>,
    /// `own` or `from_controller`: see [`WorkerCredentials`].
    pub worker_credentials: WorkerCredentials,
    /// Attempts of a git network operation that failed for a network reason.
    pub network_attempts: u32,
    /// Wait before the second attempt; doubled for each further one.
    pub retry_backoff_ms: u64,
    /// A git command that runs longer than this is killed (and counts as a network failure).
    pub timeout_sec: u64,
    pub credentials: Vec<GitCredential>,
}

impl Default for GitSettings {
    fn default() -> Self {
        GitSettings {
            allowed_schemes: vec!["https".into(), "ssh".into(), "file".into()],
            allowed_hosts: vec!["*".into()],
            file_roots: Vec::new(),
            push_run_branch: true,
            known_hosts: None,
            accept_new_host_keys: false,
            ca_file: None,
            worker_credentials: WorkerCredentials::Own,
            network_attempts: 3,
            retry_backoff_ms: 1000,
            timeout_sec: 600,
            credentials: Vec::new(),
        }
    }
}

/// Keys given as comma-separated lists in `LOOPD__GIT__…` variables.
pub(super) const LIST_KEYS: &[&str] =
    &["git.allowed_schemes", "git.allowed_hosts", "git.file_roots"];

impl GitSettings {
    /// Checks what the types cannot.
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        if let Some(s) = self
            .allowed_schemes
            .iter()
            .find(|s| !matches!(s.as_str(), "https" | "ssh" | "file" | "http"))
        {
            return Err(err(format!(
                "git.allowed_schemes: \"{s}\" is not one of https, ssh, file, http"
            )));
        }
        if let Some(r) = self.file_roots.iter().find(|r| !r.is_absolute()) {
            return Err(err(format!(
                "git.file_roots: \"{}\" must be an absolute path",
                r.display()
            )));
        }
        if self.network_attempts == 0 || self.timeout_sec == 0 {
            return Err(err(
                "git.network_attempts and git.timeout_sec must be at least 1",
            ));
        }
        for c in &self.credentials {
            if c.host.trim().is_empty() {
                return Err(err("[[git.credentials]] needs host = \"git.example.com\""));
            }
            if c.password_file.is_some() && c.password_env.is_some() {
                return Err(err(format!(
                    "[[git.credentials]] for {}: set password_file or password_env, not both",
                    c.host
                )));
            }
            if c.ssh_key_passphrase_file.is_some() && c.ssh_key_file.is_none() {
                return Err(err(format!(
                    "[[git.credentials]] for {}: ssh_key_passphrase_file needs ssh_key_file",
                    c.host
                )));
            }
        }
        Ok(())
    }
}
