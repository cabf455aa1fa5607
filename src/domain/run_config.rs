//! The effective configuration of one run: every `.loop/config` key loopd acts on, with its
//! default and its parse rules, plus the agent command keys. Pure: callers read the files
//! (`<workspace>/.loop/config`, `config_override`) and feed the text or JSON in, in precedence
//! order. The serialized form is what a run stores as `config_json`.

use crate::domain::status::{AgentOutput, ArtifactMode, CompletionMode, MergeStrategy, NameSource};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

mod parse;
pub use parse::parse_kv;
use parse::{invalid, optional, parse_bool, parse_enum, parse_int, split_command, split_list};

/// A config text or value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A non-comment line without `=` (or with an empty key).
    #[error("invalid config line {line}: '{text}' (expected key=value)")]
    InvalidLine { line: usize, text: String },
    /// A value that does not parse for its key.
    #[error("invalid value for {key}: '{value}' (expected {expected})")]
    InvalidValue {
        key: String,
        value: String,
        expected: String,
    },
}

/// Default agent command line; `{model}` is replaced by the `model` key.
pub const DEFAULT_AGENT_CMD: &str =
    "claude -p --verbose --dangerously-skip-permissions --output-format stream-json --model {model}";

/// Where a run's files go in its workspace (the existing daemon's place).
pub const DEFAULT_LOG_DIR: &str = "logs/loop";

/// Keys of the old loopd that loopd accepts and ignores without a warning.
const IGNORED_KEYS: &[&str] = &[
    "mode",
    "no_wait",
    "no_gum",
    "measure_cmd",
    "measure_timeout_sec",
    "postmortem",
    "worktree_provider",
    "queue_policy",
    "run_naming_model",
];

const IGNORED_PREFIXES: &[&str] = &["skills_", "worktrunk_"];

/// Keys that name a command to run or a path to read or write. A run request may set them
/// only with the `exec` scope (or where the operator allows it); the repository's
/// `.loop/config` always may. Every other key is a name, a number, a switch or an enum.
pub const COMMAND_KEYS: &[&str] = &[
    "agent_cmd",
    "verify_cmds",
    "prompt_file",
    "context_files",
    "specs_dir",
    "plans_dir",
    "worktree_path_template",
    "log_dir",
    "global_log_dir",
];

/// Upper bounds of the numeric keys (a value past them is refused, not clamped).
const BOUNDS: &[(&str, u64)] = &[
    ("iterations", 10_000),
    ("verify_timeout_sec", 7 * 24 * 3600),
    ("claude_timeout_sec", 7 * 24 * 3600),
    ("claude_retries", 100),
    ("claude_retry_backoff_sec", 3600),
    ("max_consecutive_verification_failures", 10_000),
    ("max_consecutive_review_failures", 10_000),
];

/// The per-run settings. Field names are the config keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunConfig {
    /// Directory of specs (holds `LEARNINGS.md`); relative to the workspace.
    pub specs_dir: String,
    /// Directory of plans; relative to the workspace.
    pub plans_dir: String,
    /// Model for implementation steps (and review steps without `review_model`).
    pub model: String,
    /// Model for review steps; `None` means `model`.
    pub review_model: Option<String>,
    /// Maximum number of implementation steps of a run.
    pub iterations: u32,
    /// How the completion token is detected.
    pub completion_mode: CompletionMode,
    /// Whether a review step follows each implementation step.
    pub reviewer: bool,
    /// Custom prompt template file; `None` falls back to `.loop/prompt.txt`.
    pub prompt_file: Option<String>,
    /// Extra files referenced in every prompt.
    pub context_files: Vec<String>,
    /// Verification commands, each run with `sh -c`.
    pub verify_cmds: Vec<String>,
    /// Per verification command timeout in seconds; 0 = none.
    pub verify_timeout_sec: u64,
    /// Agent step timeout in seconds; 0 = none.
    pub claude_timeout_sec: u64,
    /// Extra attempts of an agent step after a non-transient failure.
    pub claude_retries: u32,
    /// Backoff between agent attempts in seconds (doubled for transient errors).
    pub claude_retry_backoff_sec: u64,
    /// How runs are named.
    pub run_naming_mode: NameSource,
    /// Branch the run branch starts from; `None` = the workspace's current branch.
    pub base_branch: Option<String>,
    /// Prefix of run branch names.
    pub run_branch_prefix: String,
    /// Branch the run is merged into on completion; `None` = no merge.
    pub merge_target_branch: Option<String>,
    /// How the run branch is merged.
    pub merge_strategy: MergeStrategy,
    /// Where the run's worktree goes.
    pub worktree_path_template: String,
    /// Whether the worktree is removed after the run.
    pub worktree_cleanup: bool,
    /// Days an ended run's worktree is kept (for review) before it is removed; 0 keeps it.
    /// Fractions are allowed.
    pub worktree_keep_days: f64,
    /// Whether `summary.json` is written when the run ends.
    pub summary_json: bool,
    /// Consecutive failed verifications that fail the run; 0 disables.
    pub max_consecutive_verification_failures: u32,
    /// Consecutive failed reviews that fail the run; 0 disables.
    pub max_consecutive_review_failures: u32,
    /// Agent command line (see [`RunConfig::agent_argv`]).
    pub agent_cmd: String,
    /// How the agent prints its output.
    pub agent_output: AgentOutput,
    /// Dollars the run's agent steps may spend; past it no further step is queued and the
    /// run fails (`budget_exceeded:cost`). `None`: no budget.
    pub max_cost_usd: Option<f64>,
    /// Tokens (all four kinds) the run's agent steps may use (`budget_exceeded:tokens`).
    pub max_tokens: Option<u64>,
    /// A run's files go to `<log_dir>/run-<id>/` (relative: to the workspace).
    pub log_dir: String,
    /// And to `<global_log_dir>/runs/run-<id>/`; `None`: the daemon's data directory.
    pub global_log_dir: Option<String>,
    /// Which of the two get the copies (a single host only).
    pub artifact_mode: ArtifactMode,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            specs_dir: "specs".into(),
            plans_dir: "specs/planning".into(),
            model: "opus".into(),
            review_model: None,
            iterations: 50,
            completion_mode: CompletionMode::Trailing,
            reviewer: true,
            prompt_file: None,
            context_files: Vec::new(),
            verify_cmds: Vec::new(),
            verify_timeout_sec: 0,
            claude_timeout_sec: 600,
            claude_retries: 0,
            claude_retry_backoff_sec: 5,
            run_naming_mode: NameSource::Haiku,
            base_branch: None,
            run_branch_prefix: "run/".into(),
            merge_target_branch: None,
            merge_strategy: MergeStrategy::Squash,
            worktree_path_template: "../{{ repo }}.{{ run_branch | sanitize }}".into(),
            worktree_cleanup: true,
            worktree_keep_days: 7.0,
            summary_json: true,
            max_consecutive_verification_failures: 3,
            // The old default 0 let a failing review loop forever.
            max_consecutive_review_failures: 3,
            agent_cmd: DEFAULT_AGENT_CMD.into(),
            agent_output: AgentOutput::Auto,
            max_cost_usd: None,
            max_tokens: None,
            log_dir: DEFAULT_LOG_DIR.into(),
            global_log_dir: None,
            artifact_mode: ArtifactMode::Mirror,
        }
    }
}

/// A numeric key's value, within its bound.
fn bounded<T: TryFrom<u64>>(key: &str, value: &str) -> Result<T, ConfigError> {
    let max = BOUNDS
        .iter()
        .find(|(k, _)| *k == key)
        .map_or(u64::MAX, |(_, m)| *m);
    let n: u64 = parse_int(key, value)?;
    if n > max {
        return Err(invalid(key, value, &format!("at most {max}")));
    }
    T::try_from(n).map_err(|_| invalid(key, value, &format!("at most {max}")))
}

/// A budget in dollars: a finite, non-negative number.
fn dollars(key: &str, value: &str) -> Result<f64, ConfigError> {
    match value.trim().parse::<f64>() {
        Ok(d) if d.is_finite() && d >= 0.0 => Ok(d),
        _ => Err(invalid(key, value, "a number of dollars, 0 or more")),
    }
}

/// A model name is substituted into the agent's command line: plain characters only, so a
/// command template that puts it inside a shell string cannot be made to run anything else.
fn model_name(key: &str, value: &str) -> Result<String, ConfigError> {
    let m = value.trim();
    let plain = !m.is_empty()
        && m.len() <= 128
        && m.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/' | '@'));
    if !plain {
        return Err(invalid(
            key,
            value,
            "1-128 letters, digits, '-', '_', '.', ':', '/' or '@'",
        ));
    }
    Ok(m.to_string())
}

/// Whether `key` names a command or a path (see [`COMMAND_KEYS`]).
pub fn names_command(key: &str) -> bool {
    COMMAND_KEYS.contains(&key)
}

/// Days as a non-negative number (fractions allowed), at most ten years.
fn keep_days(key: &str, value: &str) -> Result<f64, ConfigError> {
    match value.trim().parse::<f64>() {
        Ok(d) if d.is_finite() && (0.0..=3650.0).contains(&d) => Ok(d),
        _ => Err(ConfigError::InvalidValue {
            key: key.into(),
            value: value.into(),
            expected: "a number of days from 0 to 3650".into(),
        }),
    }
}

impl RunConfig {
    /// The directory of a run's files in its workspace: `<ws>/<log_dir>/run-<id>`.
    pub fn run_log_dir(&self, workspace_root: &str, run_id: &str) -> PathBuf {
        Path::new(workspace_root)
            .join(&self.log_dir)
            .join(format!("run-{run_id}"))
    }

    /// How long an ended run's worktree is kept, in milliseconds; `None`: for ever.
    pub fn worktree_keep_ms(&self) -> Option<i64> {
        (self.worktree_keep_days > 0.0).then_some((self.worktree_keep_days * 86_400_000.0) as i64)
    }
}

fn is_ignored(key: &str) -> bool {
    IGNORED_KEYS.contains(&key) || IGNORED_PREFIXES.iter().any(|p| key.starts_with(p))
}

impl RunConfig {
    /// Sets one key from its text value. Returns a warning for an unknown key (which is
    /// otherwise ignored); out-of-scope keys of the old loopd are ignored silently.
    pub fn apply(&mut self, key: &str, value: &str) -> Result<Option<String>, ConfigError> {
        let v = value;
        match key {
            "specs_dir" => self.specs_dir = v.trim().to_string(),
            "plans_dir" => self.plans_dir = v.trim().to_string(),
            "model" => self.model = model_name(key, v)?,
            "review_model" => {
                self.review_model = optional(v).map(|m| model_name(key, &m)).transpose()?
            }
            "iterations" => self.iterations = bounded(key, v)?,
            "completion_mode" => self.completion_mode = parse_enum(key, v, CompletionMode::ALL)?,
            "reviewer" => self.reviewer = parse_bool(key, v)?,
            "prompt_file" => self.prompt_file = optional(v),
            "context_files" => self.context_files = split_list(v, None),
            "verify_cmds" => self.verify_cmds = split_list(v, Some('|')),
            "verify_timeout_sec" => self.verify_timeout_sec = bounded(key, v)?,
            "claude_timeout_sec" => self.claude_timeout_sec = bounded(key, v)?,
            "claude_retries" => self.claude_retries = bounded(key, v)?,
            "claude_retry_backoff_sec" => self.claude_retry_backoff_sec = bounded(key, v)?,
            "run_naming_mode" => self.run_naming_mode = parse_enum(key, v, NameSource::ALL)?,
            "base_branch" => self.base_branch = optional(v),
            "run_branch_prefix" => self.run_branch_prefix = v.trim().to_string(),
            "merge_target_branch" => self.merge_target_branch = optional(v),
            "merge_strategy" => self.merge_strategy = parse_enum(key, v, MergeStrategy::ALL)?,
            "worktree_path_template" => self.worktree_path_template = v.trim().to_string(),
            "worktree_cleanup" => self.worktree_cleanup = parse_bool(key, v)?,
            "worktree_keep_days" => self.worktree_keep_days = keep_days(key, v)?,
            "summary_json" => self.summary_json = parse_bool(key, v)?,
            "max_consecutive_verification_failures" => {
                self.max_consecutive_verification_failures = bounded(key, v)?
            }
            "max_consecutive_review_failures" => {
                self.max_consecutive_review_failures = bounded(key, v)?
            }
            "agent_cmd" => {
                split_command(key, v)?;
                self.agent_cmd = v.trim().to_string();
            }
            "agent_output" => self.agent_output = parse_enum(key, v, AgentOutput::ALL)?,
            "max_cost_usd" => {
                self.max_cost_usd = optional(v).map(|c| dollars(key, &c)).transpose()?
            }
            "max_tokens" => {
                self.max_tokens = optional(v).map(|n| parse_int(key, &n)).transpose()?
            }
            "log_dir" => self.log_dir = optional(v).unwrap_or_else(|| DEFAULT_LOG_DIR.to_string()),
            "global_log_dir" => self.global_log_dir = optional(v),
            "artifact_mode" => self.artifact_mode = parse_enum(key, v, ArtifactMode::ALL)?,
            _ if is_ignored(key) => {}
            _ => return Ok(Some(format!("unknown config key '{key}' ignored"))),
        }
        Ok(None)
    }

    /// Applies `key=value` text (see [`parse_kv`]) in order; returns the warnings.
    pub fn apply_kv_text(&mut self, text: &str) -> Result<Vec<String>, ConfigError> {
        let mut warnings = Vec::new();
        for (key, value) in parse_kv(text)? {
            warnings.extend(self.apply(&key, &value)?);
        }
        Ok(warnings)
    }

    /// Applies a JSON object (e.g. a `config_override` or a stored `config_json`). Strings,
    /// numbers, bools and null (= empty) go through [`RunConfig::apply`]; arrays are accepted
    /// for the list keys, one element per entry.
    pub fn apply_json(
        &mut self,
        obj: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Vec<String>, ConfigError> {
        use serde_json::Value;
        let mut warnings = Vec::new();
        for (key, value) in obj {
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                Value::Null => String::new(),
                Value::Array(items) if key == "context_files" || key == "verify_cmds" => {
                    let list = json_string_list(key, items)?;
                    if key == "context_files" {
                        self.context_files = list;
                    } else {
                        self.verify_cmds = list;
                    }
                    continue;
                }
                _ if is_ignored(key) => continue,
                other => return Err(invalid(key, &other.to_string(), "a single value")),
            };
            warnings.extend(self.apply(key, &text)?);
        }
        Ok(warnings)
    }

    /// The agent command as argv (split like a shell, no shell involved), with `{model}`
    /// replaced by `model`. The prompt is appended by the caller.
    pub fn agent_argv(&self) -> Result<Vec<String>, ConfigError> {
        self.agent_argv_with_model(&self.model)
    }

    /// Like [`RunConfig::agent_argv`] with `{model}` replaced by `model` (review steps pass
    /// [`RunConfig::effective_review_model`]).
    pub fn agent_argv_with_model(&self, model: &str) -> Result<Vec<String>, ConfigError> {
        let words = split_command("agent_cmd", &self.agent_cmd)?;
        Ok(words
            .into_iter()
            .map(|w| w.replace("{model}", model))
            .collect())
    }

    /// The model for review steps: `review_model`, else `model`.
    pub fn effective_review_model(&self) -> &str {
        self.review_model.as_deref().unwrap_or(&self.model)
    }
}

fn json_string_list(key: &str, items: &[serde_json::Value]) -> Result<Vec<String>, ConfigError> {
    items
        .iter()
        .map(|item| match item {
            serde_json::Value::String(s) => Ok(s.trim().to_string()),
            other => Err(invalid(key, &other.to_string(), "a list of strings")),
        })
        .filter(|r| !matches!(r, Ok(s) if s.is_empty()))
        .collect()
}

#[cfg(test)]
mod tests;
