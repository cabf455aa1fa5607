//! The settings tree and how it is layered: compiled defaults → config file → `LOOPD__…`
//! environment (plus `LOOPD_AUTH_TOKEN` and `LOOPD_WORKER_JOIN_TOKEN`) → command-line flags.
//! Validation turns every mistake into one line that says what to fix. Secrets are wrapped in
//! [`Secret`] so they never reach logs or `Debug` output.

use crate::domain::access::Scope;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// A value that must never be printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself, for the one place that needs it (comparison, a request header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Which subsystems this process runs (see `app::Subsystems`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Single,
    Controller,
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Single => "single",
            Role::Controller => "controller",
            Role::Worker => "worker",
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// The unnamed client token (scopes read, submit, admin); unset and no `tokens` = no
    /// client auth, which only a loopback bind allows unless `allow_unauthenticated`.
    pub token: Option<Secret>,
    /// A file holding `token` (so it is in neither argv nor the environment).
    pub token_file: Option<PathBuf>,
    /// Token a worker presents to register.
    pub worker_join_token: Option<Secret>,
    /// A file holding `worker_join_token`.
    pub worker_join_token_file: Option<PathBuf>,
    /// Named client tokens, each with its scopes (`[[auth.tokens]]`).
    #[serde(default)]
    pub tokens: Vec<NamedToken>,
    /// Serve the runs API beyond loopback without any client token (warned at every start).
    #[serde(default)]
    pub allow_unauthenticated: bool,
    /// Whether a run request may name commands or paths (`agent_cmd`, `verify_cmds`, …)
    /// without the `exec` scope. Unset: only on a single host bound to loopback.
    pub allow_request_commands: Option<bool>,
}

/// One named client token (`[[auth.tokens]]`): `token` or `token_file`, and its scopes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedToken {
    pub name: String,
    pub token: Option<Secret>,
    pub token_file: Option<PathBuf>,
    pub scopes: Vec<Scope>,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line of text per event, its spans' fields in front.
    #[default]
    Text,
    /// One JSON object per line (tracing-subscriber's JSON format).
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageType {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    #[serde(rename = "type")]
    pub kind: StorageType,
    /// Postgres URL (it may hold a password).
    pub url: Option<Secret>,
    /// SQLite file; default `<data_dir>/loopd.db`.
    pub path: Option<PathBuf>,
    pub pool_size: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactStoreType {
    Fs,
    S3,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactSettings {
    #[serde(rename = "type")]
    pub kind: ArtifactStoreType,
    /// fs: root directory; default `<data_dir>/artifacts`.
    pub root: Option<PathBuf>,
    pub bucket: Option<String>,
    pub endpoint: Option<String>,
    pub region: String,
    pub prefix: String,
    pub access_key_id: Option<Secret>,
    pub secret_access_key: Option<Secret>,
    /// Attempts per upload before the step fails.
    pub upload_attempts: u32,
    pub retry_backoff_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerSettings {
    pub max_concurrent_runs: u32,
    pub max_runs_per_workspace: u32,
    /// Lost leases a step may suffer before it fails.
    pub max_infra_attempts: u32,
    /// How long a step of a run waits for the worker that ran the run's previous step.
    pub affinity_window_ms: u64,
    /// Period of the scheduler's reconciliation tick.
    pub tick_interval_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseSettings {
    pub ttl_ms: u64,
    pub sweep_interval_ms: u64,
    pub worker_offline_after_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// The controllers' URLs: one (perhaps a load balancer's), several separated by commas,
    /// or (in a file) an array; see [`WorkerSettings::controllers`].
    #[serde(default, deserialize_with = "controller_list")]
    pub controller: Option<String>,
    pub join_token: Option<Secret>,
    /// A file holding `join_token`.
    pub join_token_file: Option<PathBuf>,
    pub slots: u32,
    #[serde(default)]
    pub labels: Vec<String>,
    /// Default `<data_dir>/work`.
    pub work_dir: Option<PathBuf>,
    pub heartbeat_interval_ms: u64,
    pub drain_timeout_ms: u64,
    /// TERM → this grace → KILL, for cancelled or abandoned steps.
    pub kill_grace_ms: u64,
    /// A clone no step has used for this many hours is removed when the worker starts and
    /// every `clone_sweep_interval_ms` (0: kept for ever); the run's next step here clones
    /// again, from the run's checkpoint.
    pub clone_keep_hours: u64,
    /// How often a running worker also removes such clones, except those of the runs it has
    /// steps of (0: only at start).
    pub clone_sweep_interval_ms: u64,
    /// Environment variables the agent and verify commands inherit (`PREFIX_*` globs allowed).
    #[serde(default)]
    pub agent_env: Vec<String>,
    /// `controller` (upload through the controller) or `direct` (to this worker's own store).
    pub artifact_upload: String,
}

impl WorkerSettings {
    /// The controllers a worker may talk to, in order.
    pub fn controllers(&self) -> Vec<String> {
        split_urls(self.controller.as_deref().unwrap_or(""))
    }
}

/// URLs separated by commas (or white space), trimmed, empty ones left out.
pub fn split_urls(list: &str) -> Vec<String> {
    list.split(|c: char| c == ',' || c.is_whitespace())
        .map(|u| u.trim().trim_end_matches('/').to_string())
        .filter(|u| !u.is_empty())
        .collect()
}

/// `worker.controller`: a string (one URL, or several separated by commas), or an array of
/// URLs, kept as one comma-separated string.
fn controller_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List {
        One(String),
        Many(Vec<String>),
    }
    Ok(Option::<List>::deserialize(d)?.map(|l| match l {
        List::One(s) => s,
        List::Many(v) => v.join(","),
    }))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub json_body_bytes: usize,
    pub artifact_bytes: usize,
    pub output_chunk_bytes: usize,
    /// Artifact uploads one worker may have in flight through the controller (429 past it).
    pub artifact_uploads_per_worker: usize,
    /// Open `/runs/{id}/output` streams per run (429 past it).
    pub output_streams_per_run: usize,
    /// Open `/runs/{id}/output` streams per client address (429 past it).
    pub output_streams_per_client: usize,
    /// Registrations a minute with the join token, in bursts of as many (429 past it; 0: no
    /// limit).
    pub registrations_per_minute: u32,
    /// Workers online at once (a registration past it gets 429; 0: no limit).
    pub max_live_workers: usize,
}

/// `[api_limits]`: the adaptive concurrency limit of each agent account (model and agent
/// command) across the pool (see docs/usage-and-limits.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiLimitSettings {
    /// Off: no step counts against an account, no push-back is recorded.
    pub enabled: bool,
    /// The most steps of one account that run at once (the limit starts there).
    pub max_concurrent: u32,
    /// Completions in a row after which a lowered limit grows by one.
    pub recover_after: u32,
}

impl Default for ApiLimitSettings {
    fn default() -> Self {
        ApiLimitSettings {
            enabled: true,
            max_concurrent: 8,
            recover_after: 5,
        }
    }
}

impl ApiLimitSettings {
    /// `max_concurrent` as stored (at least one).
    pub fn max(&self) -> i32 {
        self.max_concurrent.clamp(1, i32::MAX as u32) as i32
    }

    /// `recover_after` as stored (at least one).
    pub fn recover(&self) -> i32 {
        self.recover_after.clamp(1, i32::MAX as u32) as i32
    }
}

/// The whole settings tree (names are a contract: see README "Configuration").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub role: Role,
    pub bind: String,
    pub data_dir: PathBuf,
    pub log: String,
    #[serde(default)]
    pub log_format: LogFormat,
    pub auth: AuthSettings,
    pub storage: StorageSettings,
    pub artifacts: ArtifactSettings,
    pub scheduler: SchedulerSettings,
    pub lease: LeaseSettings,
    pub worker: WorkerSettings,
    pub limits: LimitSettings,
    #[serde(default)]
    pub git: GitSettings,
    #[serde(default)]
    pub budgets: BudgetSettings,
    #[serde(default)]
    pub api_limits: ApiLimitSettings,
}

/// The default data directory: `$XDG_DATA_HOME/loopd`, else `~/.local/share/loopd`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("loopd");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".local/share/loopd")
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            role: Role::Single,
            bind: "127.0.0.1:7700".into(),
            data_dir: default_data_dir(),
            log: "info".into(),
            log_format: LogFormat::Text,
            auth: AuthSettings::default(),
            storage: StorageSettings {
                kind: StorageType::Sqlite,
                url: None,
                path: None,
                pool_size: 32,
            },
            artifacts: ArtifactSettings {
                kind: ArtifactStoreType::Fs,
                root: None,
                bucket: None,
                endpoint: None,
                region: "us-east-1".into(),
                prefix: String::new(),
                access_key_id: None,
                secret_access_key: None,
                upload_attempts: 5,
                retry_backoff_ms: 200,
            },
            scheduler: SchedulerSettings {
                max_concurrent_runs: 3,
                max_runs_per_workspace: 1,
                max_infra_attempts: 3,
                affinity_window_ms: 3000,
                tick_interval_ms: 1000,
            },
            lease: LeaseSettings {
                ttl_ms: 30_000,
                sweep_interval_ms: 1000,
                worker_offline_after_ms: 10_000,
            },
            worker: WorkerSettings {
                controller: None,
                join_token: None,
                join_token_file: None,
                slots: 1,
                labels: Vec::new(),
                work_dir: None,
                heartbeat_interval_ms: 2000,
                drain_timeout_ms: 600_000,
                kill_grace_ms: 5000,
                clone_keep_hours: 168,
                clone_sweep_interval_ms: 3_600_000,
                agent_env: [
                    "PATH",
                    "HOME",
                    "USER",
                    "LOGNAME",
                    "SHELL",
                    "LANG",
                    "LC_*",
                    "TERM",
                    "TMPDIR",
                    "TZ",
                    "ANTHROPIC_*",
                    "CLAUDE_*",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
                artifact_upload: "controller".into(),
            },
            limits: LimitSettings {
                json_body_bytes: 1 << 20,
                artifact_bytes: 512 << 20,
                output_chunk_bytes: 4 << 20,
                artifact_uploads_per_worker: 4,
                output_streams_per_run: 1000,
                output_streams_per_client: 100,
                registrations_per_minute: 120,
                max_live_workers: 1000,
            },
            git: GitSettings::default(),
            budgets: BudgetSettings::default(),
            api_limits: ApiLimitSettings::default(),
        }
    }
}

/// Command-line flags that override every other layer (`None` = not given).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub role: Option<Role>,
    pub config: Option<PathBuf>,
    pub bind: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub controller: Option<String>,
    pub join_token: Option<String>,
    pub slots: Option<u32>,
    pub labels: Option<Vec<String>>,
}

/// A settings mistake, as one line that says what to fix.
#[derive(Debug, thiserror::Error)]
#[error("invalid settings: {0}")]
pub struct SettingsError(pub String);

fn err(msg: impl Into<String>) -> SettingsError {
    SettingsError(msg.into())
}

impl Settings {
    /// The SQLite file this process uses.
    pub fn sqlite_path(&self) -> PathBuf {
        self.storage
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("loopd.db"))
    }

    /// The fs artifact store's root.
    pub fn artifact_root(&self) -> PathBuf {
        self.artifacts
            .root
            .clone()
            .unwrap_or_else(|| self.data_dir.join("artifacts"))
    }

    /// The worker's directory for clones and step scratch files.
    pub fn work_dir(&self) -> PathBuf {
        self.worker
            .work_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("work"))
    }
}

mod auth;
mod budgets;
mod git;
mod layering;

pub use auth::{ClientToken, MIN_TOKEN_CHARS};
pub use budgets::{installed as installed_budgets, BudgetSettings, WorkspaceBudget};
pub use git::{GitCredential, GitSettings, WorkerCredentials};

#[cfg(test)]
mod tests;
