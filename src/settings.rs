//! The settings tree and how it is layered: compiled defaults → config file → `LOOPD__…`
//! environment (plus `LOOPD_AUTH_TOKEN` and `LOOPD_WORKER_JOIN_TOKEN`) → command-line flags.
//! Validation turns every mistake into one line that says what to fix. Secrets are wrapped in
//! [`Secret`] so they never reach logs or `Debug` output.

use config::{Config, Environment, File, FileFormat};
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
    /// Client token for the runs API; unset = no client auth.
    pub token: Option<Secret>,
    /// Token a worker presents to register.
    pub worker_join_token: Option<Secret>,
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
    pub controller: Option<String>,
    pub join_token: Option<Secret>,
    pub slots: u32,
    #[serde(default)]
    pub labels: Vec<String>,
    /// Default `<data_dir>/work`.
    pub work_dir: Option<PathBuf>,
    pub heartbeat_interval_ms: u64,
    pub drain_timeout_ms: u64,
    /// TERM → this grace → KILL, for cancelled or abandoned steps.
    pub kill_grace_ms: u64,
    /// Environment variables the agent and verify commands inherit (`PREFIX_*` globs allowed).
    #[serde(default)]
    pub agent_env: Vec<String>,
    /// `controller` (upload through the controller) or `direct` (to this worker's own store).
    pub artifact_upload: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub json_body_bytes: usize,
    pub artifact_bytes: usize,
    pub output_chunk_bytes: usize,
}

/// The whole settings tree (names are a contract: see README "Configuration").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub role: Role,
    pub bind: String,
    pub data_dir: PathBuf,
    pub log: String,
    pub auth: AuthSettings,
    pub storage: StorageSettings,
    pub artifacts: ArtifactSettings,
    pub scheduler: SchedulerSettings,
    pub lease: LeaseSettings,
    pub worker: WorkerSettings,
    pub limits: LimitSettings,
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
            auth: AuthSettings::default(),
            storage: StorageSettings {
                kind: StorageType::Sqlite,
                url: None,
                path: None,
                pool_size: 16,
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
                slots: 1,
                labels: Vec::new(),
                work_dir: None,
                heartbeat_interval_ms: 2000,
                drain_timeout_ms: 600_000,
                kill_grace_ms: 5000,
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
            },
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
    /// Layers every source and validates the result. `env` is the process environment (tests
    /// pass their own).
    pub fn load(flags: &Overrides, env: &[(String, String)]) -> Result<Settings, SettingsError> {
        let mut compiled = Settings::default();
        // 0 = not configured: the default depends on the role (see `default_slots`).
        compiled.worker.slots = 0;
        let defaults =
            Config::try_from(&compiled).map_err(|e| err(format!("compiled defaults: {e}")))?;
        let mut builder = Config::builder().add_source(defaults);

        let env_value = |k: &str| {
            env.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .filter(|v| !v.is_empty())
        };
        let file = flags
            .config
            .clone()
            .or_else(|| env_value("LOOPD_CONFIG").map(PathBuf::from));
        if let Some(path) = &file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| err(format!("cannot read config file {}: {e}", path.display())))?;
            builder = builder.add_source(File::from_str(&text, FileFormat::Toml));
        }

        let vars: config::Map<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with("LOOPD__"))
            .cloned()
            .collect();
        builder = builder.add_source(
            Environment::with_prefix("LOOPD")
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("worker.labels")
                .with_list_parse_key("worker.agent_env")
                .try_parsing(true)
                .source(Some(vars)),
        );
        builder = apply_overrides(builder, flags, &env_value).map_err(|e| err(format!("{e}")))?;

        let built = builder.build().map_err(|e| describe(&file, e))?;
        let mut settings: Settings = built.try_deserialize().map_err(|e| describe(&file, e))?;
        if settings.worker.slots == 0 {
            settings.worker.slots = settings.default_slots();
        }
        settings.validate()?;
        Ok(settings)
    }

    /// Steps at once when `worker.slots` is not configured: a single host runs as many steps as
    /// it may run runs (like the old loopd, whose runs all progressed at once); a worker, one.
    fn default_slots(&self) -> u32 {
        match self.role {
            Role::Single => self.scheduler.max_concurrent_runs.max(1),
            Role::Controller | Role::Worker => 1,
        }
    }

    /// Checks what the types cannot: combinations and required values per role.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.bind.parse::<std::net::SocketAddr>().is_err() {
            return Err(err(format!(
                "bind = \"{}\" is not an address like 127.0.0.1:7700",
                self.bind
            )));
        }
        if self.role == Role::Worker {
            match self.worker.controller.as_deref() {
                None | Some("") => {
                    return Err(err(
                        "role worker needs the controller's URL: pass --controller URL or set worker.controller",
                    ))
                }
                Some(u) => {
                    let parsed = url::Url::parse(u).map_err(|e| {
                        err(format!("worker.controller \"{u}\" is not a URL: {e}"))
                    })?;
                    if !matches!(parsed.scheme(), "http" | "https") {
                        return Err(err(format!(
                            "worker.controller \"{u}\" must start with http:// or https://"
                        )));
                    }
                }
            }
            if self.worker.join_token.is_none() {
                return Err(err(
                    "role worker needs the join token: pass --join-token T or set LOOPD_WORKER_JOIN_TOKEN",
                ));
            }
            if self.worker.slots == 0 {
                return Err(err("worker.slots must be at least 1"));
            }
        }
        if self.role != Role::Worker
            && self.storage.kind == StorageType::Postgres
            && self
                .storage
                .url
                .as_ref()
                .is_none_or(|u| u.expose().is_empty())
        {
            return Err(err(
                "storage.type = \"postgres\" needs storage.url (postgres://user@host/db)",
            ));
        }
        if self.artifacts.kind == ArtifactStoreType::S3
            && self.artifacts.bucket.as_deref().is_none_or(str::is_empty)
        {
            return Err(err("artifacts.type = \"s3\" needs artifacts.bucket"));
        }
        if !matches!(
            self.worker.artifact_upload.as_str(),
            "controller" | "direct"
        ) {
            return Err(err(format!(
                "worker.artifact_upload = \"{}\" must be \"controller\" or \"direct\"",
                self.worker.artifact_upload
            )));
        }
        if self.lease.ttl_ms == 0 || self.lease.sweep_interval_ms == 0 {
            return Err(err(
                "lease.ttl_ms and lease.sweep_interval_ms must be positive",
            ));
        }
        if self.storage.pool_size == 0 {
            return Err(err("storage.pool_size must be at least 1"));
        }
        Ok(())
    }

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

fn apply_overrides(
    mut b: config::ConfigBuilder<config::builder::DefaultState>,
    flags: &Overrides,
    env_value: &dyn Fn(&str) -> Option<String>,
) -> Result<config::ConfigBuilder<config::builder::DefaultState>, config::ConfigError> {
    if let Some(t) = env_value("LOOPD_AUTH_TOKEN") {
        b = b.set_override("auth.token", t)?;
    }
    if let Some(t) = env_value("LOOPD_WORKER_JOIN_TOKEN") {
        b = b.set_override("auth.worker_join_token", t.clone())?;
        b = b.set_override("worker.join_token", t)?;
    }
    if let Some(r) = flags.role {
        b = b.set_override("role", r.as_str())?;
    }
    if let Some(v) = &flags.bind {
        b = b.set_override("bind", v.as_str())?;
    }
    if let Some(v) = &flags.data_dir {
        b = b.set_override("data_dir", v.to_string_lossy().to_string())?;
    }
    if let Some(v) = &flags.controller {
        b = b.set_override("worker.controller", v.as_str())?;
    }
    if let Some(v) = &flags.join_token {
        b = b.set_override("worker.join_token", v.as_str())?;
    }
    if let Some(v) = flags.slots {
        b = b.set_override("worker.slots", v as i64)?;
    }
    if let Some(v) = &flags.labels {
        b = b.set_override("worker.labels", v.clone())?;
    }
    Ok(b)
}

/// Turns a config error into one line, naming the file when there is one.
fn describe(file: &Option<PathBuf>, e: config::ConfigError) -> SettingsError {
    let text = e.to_string().replace('\n', " ");
    match file {
        Some(p) => err(format!("{text} (config file {})", display(p))),
        None => err(text),
    }
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests;
