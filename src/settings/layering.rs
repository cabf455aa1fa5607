//! Layering and validation: compiled defaults → config file → `LOOPD__…` environment (plus
//! `LOOPD_AUTH_TOKEN` and `LOOPD_WORKER_JOIN_TOKEN`) → command-line flags, then one check that
//! turns every mistake into one line saying what to fix.

use super::*;
use config::{Config, Environment, File, FileFormat};

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
                .with_list_parse_key(super::git::LIST_KEYS[0])
                .with_list_parse_key(super::git::LIST_KEYS[1])
                .with_list_parse_key(super::git::LIST_KEYS[2])
                .try_parsing(true)
                .source(Some(vars)),
        );
        builder = apply_overrides(builder, flags, &env_value).map_err(|e| err(format!("{e}")))?;

        let built = builder.build().map_err(|e| describe(&file, e))?;
        let mut settings: Settings = built.try_deserialize().map_err(|e| describe(&file, e))?;
        if settings.worker.slots == 0 {
            settings.worker.slots = settings.default_slots();
        }
        settings.read_token_files()?;
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
            let urls = self.worker.controllers();
            if urls.is_empty() {
                return Err(err(
                    "role worker needs the controller's URL: pass --controller URL or set worker.controller",
                ));
            }
            for u in &urls {
                let parsed = url::Url::parse(u)
                    .map_err(|e| err(format!("worker.controller \"{u}\" is not a URL: {e}")))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(err(format!(
                        "worker.controller \"{u}\" must start with http:// or https://"
                    )));
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
        if self.api_limits.max_concurrent == 0 || self.api_limits.recover_after == 0 {
            return Err(err(
                "api_limits.max_concurrent and api_limits.recover_after must be at least 1",
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
        self.budgets.validate()?;
        if self.storage.pool_size == 0 {
            return Err(err("storage.pool_size must be at least 1"));
        }
        if self.limits.artifact_uploads_per_worker == 0 {
            return Err(err("limits.artifact_uploads_per_worker must be at least 1"));
        }
        if self.limits.output_streams_per_run == 0 || self.limits.output_streams_per_client == 0 {
            return Err(err(
                "limits.output_streams_per_run and limits.output_streams_per_client must be at least 1",
            ));
        }
        self.validate_auth()?;
        self.git.validate()
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
