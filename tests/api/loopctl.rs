//! A test-local copy of the types the old `loopctl` deserializes responses into (REFERENCE.md
//! §2): required keys without `#[serde(default)]`, closed enums (an unknown spelling fails the
//! whole response), timestamps that must parse as RFC 3339, unknown fields ignored.

#![allow(dead_code)] // fields exist to be deserialized, not read

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Deserializer};

/// An RFC 3339 timestamp (loopctl holds `DateTime<Utc>`).
#[derive(Debug, Clone)]
pub struct Ts(pub DateTime<FixedOffset>);

impl<'de> Deserialize<'de> for Ts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(Ts)
            .map_err(|e| serde::de::Error::custom(format!("not RFC 3339: {s}: {e}")))
    }
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RunNameSource {
    SpecSlug,
    Haiku,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunStatus {
    Pending,
    Running,
    Paused,
    Completed,
    Failed,
    Canceled,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReviewStatus {
    Pending,
    Reviewed,
    Scrapped,
    Merged,
    PrCreated,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MergeStrategy {
    None,
    Merge,
    Squash,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WorktreeProvider {
    Auto,
    Worktrunk,
    Git,
}

#[derive(Debug, Deserialize)]
pub struct RunWorktree {
    pub base_branch: String,
    pub run_branch: String,
    pub merge_target_branch: Option<String>,
    pub merge_strategy: MergeStrategy,
    pub worktree_path: String,
    pub provider: WorktreeProvider,
}

#[derive(Debug, Deserialize)]
pub struct Run {
    pub id: String,
    pub name: String,
    pub name_source: RunNameSource,
    pub status: RunStatus,
    pub workspace_root: String,
    pub spec_path: String,
    pub plan_path: Option<String>,
    pub worktree: Option<RunWorktree>,
    pub worktree_cleanup_status: Option<String>,
    pub worktree_cleaned_at: Option<Ts>,
    pub config_json: Option<String>,
    pub created_at: Ts,
    pub updated_at: Ts,
    pub review_status: ReviewStatus,
    pub review_action_at: Option<Ts>,
    pub pr_url: Option<String>,
    pub merge_commit: Option<String>,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StepPhase {
    Implementation,
    Review,
    Verification,
    Watchdog,
    Merge,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StepStatus {
    Queued,
    InProgress,
    Succeeded,
    Failed,
    Retrying,
    Canceled,
}

#[derive(Debug, Deserialize)]
pub struct Step {
    pub id: String,
    pub run_id: String,
    pub phase: StepPhase,
    pub status: StepStatus,
    pub attempt: u32,
    pub started_at: Option<Ts>,
    pub ended_at: Option<Ts>,
    pub exit_code: Option<i32>,
    pub prompt_path: Option<String>,
    pub output_path: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RunResponse {
    pub run: Run,
}

#[derive(Debug, Deserialize)]
pub struct RunsResponse {
    pub runs: Vec<Run>,
}

#[derive(Debug, Deserialize)]
pub struct StepsResponse {
    pub steps: Vec<Step>,
}

/// `{step_id, offset, content}`: all three required (what `loopctl tail` reads).
#[derive(Debug, Deserialize)]
pub struct OutputEvent {
    pub step_id: String,
    pub offset: u64,
    pub content: String,
}

/// Deserializes `text` as loopctl would, panicking with the body on failure.
pub fn parse<T: serde::de::DeserializeOwned>(text: &str) -> T {
    serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("an old loopctl cannot parse this ({e}): {text}"))
}
