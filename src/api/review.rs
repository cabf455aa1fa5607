//! Wire types of the review workflow (docs/api.md "Review"): the run diff, the merge and
//! create-pr requests and answers, the worktree listing and the postmortem. The shapes are the
//! existing daemon's (its dashboard reads them); additions are marked.

use serde::{Deserialize, Serialize};

/// The artifact holding a completed run's diff (kind `review_diff`).
pub const REVIEW_DIFF_NAME: &str = "review-diff.json";

/// Largest diff snapshot written (the existing daemon's cap).
pub const REVIEW_DIFF_MAX_BYTES: usize = 50 << 20;

/// `GET /runs/{id}/diff`: the run's changes from its base branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunDiff {
    pub base_ref: String,
    pub head_ref: String,
    pub commits: Vec<DiffCommit>,
    pub files: Vec<DiffFile>,
    pub stats: DiffStats,
}

/// One commit of the run branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffCommit {
    pub sha: String,
    /// The subject line.
    pub message: String,
    /// The author's name.
    pub author: String,
    /// Author time, ISO 8601 with the author's offset (`git log --format=%aI`).
    pub timestamp: String,
    pub files: Vec<DiffFile>,
    pub stats: DiffStats,
}

/// One changed file with its patch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffFile {
    pub path: String,
    /// `added`, `modified`, `deleted` or `renamed`.
    pub status: String,
    /// The path before a rename (an addition: the existing daemon never sends it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_path: Option<String>,
    pub patch: String,
    pub additions: u64,
    pub deletions: u64,
}

/// Line counts of a diff.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffStats {
    pub additions: u64,
    pub deletions: u64,
    #[serde(default)]
    pub files_changed: u64,
}

/// `review-diff.json`: the diff at completion, with the commits it was computed between.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunDiffSnapshot {
    #[serde(flatten)]
    pub diff: RunDiff,
    pub base_sha: String,
    pub head_sha: String,
}

/// `POST /runs/{id}/merge` (an empty body means the defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeRequest {
    /// `squash` (default) or `merge`.
    #[serde(default)]
    pub strategy: Option<String>,
}

/// The merge's answer: the target branch's new commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeResponse {
    pub commit: String,
}

/// `POST /runs/{id}/create-pr` (an empty body means the defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatePrRequest {
    /// Default: the run's name.
    #[serde(default)]
    pub title: Option<String>,
    /// Default: `Created by loopd run <id>`.
    #[serde(default)]
    pub body: Option<String>,
}

/// The pull request's URL, as `gh` printed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatePrResponse {
    pub url: String,
}

/// `POST /runs/{id}/postmortem` (an empty body means the defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostmortemRequest {
    /// The model the analyses run with (`{model}` of `agent_cmd`). Default: the run's `model`.
    #[serde(default)]
    pub model: Option<String>,
    /// Only write the git snapshot and the prompts; run nothing.
    #[serde(default)]
    pub prompt_only: Option<bool>,
}

/// `GET /worktrees?workspace=`: the git worktrees of a workspace and the runs they belong to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorktreesEnvelope {
    pub workspace: String,
    pub worktrees: Vec<WorktreeInfo>,
}

/// One linked worktree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorktreeInfo {
    pub path: String,
    pub branch: Option<String>,
    pub commit: String,
    pub run_id: Option<String>,
    pub run_status: Option<String>,
    /// Why it is kept (additions): the run's `worktree_cleanup_status` and, for an ended
    /// run's worktree that `worktree_keep_days` will remove, when (RFC 3339).
    #[serde(default)]
    pub cleanup_status: Option<String>,
    #[serde(default)]
    pub remove_after: Option<String>,
}
