//! The existing daemon's rows as its schema has them (see `recognise` for the columns), read
//! whole in their insertion order (rowid): that order is the order things happened in, since
//! its step start times are NULL and equal timestamps are common. Used by the take-over only.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::sqlite::SqliteConnection;

#[derive(Debug, Clone, Default, QueryableByName)]
pub struct UpRun {
    #[diesel(sql_type = Text)]
    pub id: String,
    #[diesel(sql_type = Text)]
    pub name: String,
    #[diesel(sql_type = Text)]
    pub name_source: String,
    #[diesel(sql_type = Text)]
    pub status: String,
    #[diesel(sql_type = Text)]
    pub workspace_root: String,
    #[diesel(sql_type = Text)]
    pub spec_path: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub plan_path: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub base_branch: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub run_branch: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub merge_target_branch: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub merge_strategy: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub worktree_path: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub config_json: Option<String>,
    #[diesel(sql_type = BigInt)]
    pub created_at: i64,
    #[diesel(sql_type = BigInt)]
    pub updated_at: i64,
    #[diesel(sql_type = Nullable<Text>)]
    pub worktree_cleanup_status: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub worktree_cleaned_at: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    pub review_status: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub review_action_at: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    pub pr_url: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub merge_commit: Option<String>,
}

#[derive(Debug, Clone, Default, QueryableByName)]
pub struct UpStep {
    #[diesel(sql_type = Text)]
    pub id: String,
    #[diesel(sql_type = Text)]
    pub run_id: String,
    #[diesel(sql_type = Text)]
    pub phase: String,
    #[diesel(sql_type = Text)]
    pub status: String,
    #[diesel(sql_type = BigInt)]
    pub attempt: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub started_at: Option<i64>,
    /// The start while the step runs, its end once it has ended (upstream's quirk).
    #[diesel(sql_type = Nullable<BigInt>)]
    pub ended_at: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub exit_code: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    pub prompt_path: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub output_path: Option<String>,
}

#[derive(Debug, Clone, Default, QueryableByName)]
pub struct UpEvent {
    #[diesel(sql_type = Text)]
    pub id: String,
    #[diesel(sql_type = Text)]
    pub run_id: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub step_id: Option<String>,
    #[diesel(sql_type = Text)]
    pub event_type: String,
    #[diesel(sql_type = BigInt)]
    pub ts: i64,
    #[diesel(sql_type = Text)]
    pub payload_json: String,
}

#[derive(Debug, Clone, Default, QueryableByName)]
pub struct UpArtifact {
    #[diesel(sql_type = Text)]
    pub id: String,
    #[diesel(sql_type = Text)]
    pub run_id: String,
    #[diesel(sql_type = Text)]
    pub kind: String,
    /// `workspace` or `global`.
    #[diesel(sql_type = Text)]
    pub location: String,
    #[diesel(sql_type = Text)]
    pub path: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub checksum: Option<String>,
}

/// Everything the existing daemon recorded.
#[derive(Debug, Clone, Default)]
pub struct Upstream {
    pub runs: Vec<UpRun>,
    pub steps: Vec<UpStep>,
    pub events: Vec<UpEvent>,
    pub artifacts: Vec<UpArtifact>,
}

/// Reads every row of the existing daemon's tables in `main`.
pub fn load(c: &mut SqliteConnection) -> QueryResult<Upstream> {
    Ok(Upstream {
        runs: diesel::sql_query(
            "SELECT id, name, name_source, status, workspace_root, spec_path, plan_path, \
             base_branch, run_branch, merge_target_branch, merge_strategy, worktree_path, \
             config_json, created_at, updated_at, worktree_cleanup_status, worktree_cleaned_at, \
             review_status, review_action_at, pr_url, merge_commit \
             FROM main.runs ORDER BY rowid",
        )
        .load(c)?,
        steps: diesel::sql_query(
            "SELECT id, run_id, phase, status, attempt, started_at, ended_at, exit_code, \
             prompt_path, output_path FROM main.steps ORDER BY rowid",
        )
        .load(c)?,
        events: diesel::sql_query(
            "SELECT id, run_id, step_id, type AS event_type, ts, payload_json \
             FROM main.events ORDER BY rowid",
        )
        .load(c)?,
        artifacts: diesel::sql_query(
            "SELECT id, run_id, kind, location, path, checksum FROM main.artifacts ORDER BY rowid",
        )
        .load(c)?,
    })
}
