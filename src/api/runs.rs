//! Wire types of the runs API (API.md §1): the run and step objects, their envelopes, and the
//! create-run request. Shared by the server and the CLI so both parse the same shapes.

use crate::domain::usage::{RunUsage, StepUsage};
use crate::domain::{
    MergeStrategy, NameSource, ReviewStatus, RunStatus, StepPhase, StepStatus, StoreKind,
    WorkspaceSource,
};
use serde::{Deserialize, Serialize};

/// The git worktree a shared_fs run works in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunWorktree {
    pub base_branch: String,
    pub run_branch: String,
    pub merge_target_branch: Option<String>,
    pub merge_strategy: MergeStrategy,
    pub worktree_path: String,
    /// Always `git`: the worktrunk provider of the old daemon is out of scope.
    pub provider: String,
}

/// A run as the API shows it. Every key is always present (clients need them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub id: String,
    pub name: String,
    pub name_source: NameSource,
    pub status: RunStatus,
    pub workspace_root: String,
    pub spec_path: String,
    pub plan_path: Option<String>,
    pub worktree: Option<RunWorktree>,
    pub worktree_cleanup_status: Option<String>,
    pub worktree_cleaned_at: Option<String>,
    pub config_json: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub review_status: ReviewStatus,
    pub review_action_at: Option<String>,
    pub pr_url: Option<String>,
    pub merge_commit: Option<String>,
    pub workspace_source: WorkspaceSource,
    pub repo_url: Option<String>,
    pub repo_ref: Option<String>,
    pub artifact_store: StoreKind,
    pub labels: Vec<String>,
    pub waiting_reason: Option<String>,
    /// Why a FAILED run failed (the `reason` of its RUN_FAILED event). An addition.
    #[serde(default)]
    pub failure_reason: Option<String>,
    /// A completed git run's branch and commit as pushed to its remote (`git.push_run_branch`).
    /// Additions.
    #[serde(default)]
    pub pushed_branch: Option<String>,
    #[serde(default)]
    pub pushed_commit: Option<String>,
    /// The branch a git run works on and pushes: `run/<name>`, or with `-2`, `-3`, … appended
    /// when the remote had that branch when the run was submitted. An addition.
    #[serde(default)]
    pub run_branch: Option<String>,
    /// What the run's agent steps reported they spent, added up; `null` when none reported
    /// any (text output). An addition.
    #[serde(default)]
    pub usage: Option<RunUsage>,
}

/// One step of a run as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub id: String,
    pub run_id: String,
    pub phase: StepPhase,
    pub status: StepStatus,
    pub attempt: u32,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub exit_code: Option<i32>,
    pub prompt_path: Option<String>,
    pub output_path: Option<String>,
    pub worker_id: Option<String>,
    pub lease_epoch: Option<i64>,
    pub lease_expires_at: Option<String>,
    /// Leases this step lost (worker died, lease expired). An addition.
    #[serde(default)]
    pub infra_attempts: u32,
    /// Why the step failed, when it did. An addition.
    #[serde(default)]
    pub failure_reason: Option<String>,
    /// What the agent reported it spent in this step (its `result` event). An addition.
    #[serde(default)]
    pub usage: Option<StepUsage>,
}

/// `{"run": Run}`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunEnvelope {
    pub run: Run,
}

/// `{"runs": [Run]}`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunsEnvelope {
    pub runs: Vec<Run>,
}

/// `{"steps": [Step]}`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepsEnvelope {
    pub steps: Vec<Step>,
}

/// `config_override`: a path to a key=value file, or a JSON object (given as a string or an object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ConfigOverride {
    Text(String),
    Object(serde_json::Map<String, serde_json::Value>),
}

/// `POST /runs` body. Unknown fields are ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateRunRequest {
    pub spec_path: String,
    pub workspace_root: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_override: Option<ConfigOverride>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_source: Option<NameSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_branch_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge_target_branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge_strategy: Option<MergeStrategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worktree_path_template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_source: Option<WorkspaceSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
}

/// `GET /runs` query string. `status` is accepted in any letter case (`running`), as the
/// upstream daemon accepts it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ListRunsQuery {
    pub workspace_root: Option<String>,
    #[serde(default, deserialize_with = "status_any_case")]
    pub status: Option<RunStatus>,
}

fn status_any_case<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<RunStatus>, D::Error> {
    let s = String::deserialize(d)?;
    s.to_ascii_uppercase()
        .parse()
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// `GET /runs/{id}/steps` query string: which phases to list.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StepsQuery {
    #[serde(default)]
    pub phases: StepPhases,
}

/// Which steps `GET /runs/{id}/steps` lists. The old loopctl parses `phase` as a closed enum
/// of the pipeline's five phases and fails on the whole answer at any other spelling, so
/// unless a client asks for `all` the listing holds only those (a postmortem's steps are
/// left out); loopd's own client asks for `all`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepPhases {
    /// implementation, review, verification, watchdog and merge: what the old clients know.
    #[default]
    Pipeline,
    /// Every phase, the postmortem's too.
    All,
}

impl StepPhases {
    /// Whether a step of `phase` is listed.
    pub fn lists(self, phase: StepPhase) -> bool {
        use StepPhase::*;
        // A closed list: a phase added later stays out of the old clients' way too.
        self == StepPhases::All
            || matches!(
                phase,
                Implementation | Review | Verification | Watchdog | Merge
            )
    }
}

/// One artifact in `GET /runs/{id}/artifacts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactInfo {
    pub name: String,
    pub kind: String,
    pub step_id: Option<String>,
    pub size: u64,
    pub sha256: String,
    pub created_at: String,
}

/// `{"artifacts": [ArtifactInfo]}`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArtifactsEnvelope {
    pub artifacts: Vec<ArtifactInfo>,
}

/// The JSON of one SSE event frame of `/runs/{id}/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventFrame {
    pub id: String,
    pub run_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_id: Option<String>,
    pub event_type: String,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
    pub payload: serde_json::Value,
}

/// The JSON of one SSE frame of `/runs/{id}/output`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputFrame {
    pub step_id: String,
    /// Run-wide position of the first character, in UTF-16 code units (JavaScript's
    /// `length`): `offset + content.length` is the frame's SSE `id:`, the resume cursor.
    pub offset: u64,
    pub content: String,
}

/// The error body of every 4xx/5xx answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub code: String,
}
