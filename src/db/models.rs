//! Row and insert types, one per table; queries live in the per-table files.

use super::schema::{artifacts, events, run_state, runs, steps, workers};
use crate::domain::status::{RunStatus, StepStatus, WorkerStatus};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset, Serialize, Deserialize)]
#[diesel(table_name = runs)]
#[diesel(treat_none_as_null = true)]
pub struct RunRow {
    pub id: String,
    pub name: String,
    pub name_source: String,
    pub status: String,
    pub workspace_root: String,
    pub spec_path: String,
    pub plan_path: Option<String>,
    pub worktree_json: Option<String>,
    pub worktree_cleanup_status: Option<String>,
    pub worktree_cleaned_at: Option<i64>,
    pub config_json: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub review_status: String,
    pub review_action_at: Option<i64>,
    pub pr_url: Option<String>,
    pub merge_commit: Option<String>,
    pub workspace_source: String,
    pub repo_url: Option<String>,
    pub repo_ref: Option<String>,
    pub artifact_store: String,
    pub labels: String,
    pub waiting_reason: Option<String>,
    pub failure_reason: Option<String>,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    /// A completed git run's branch and commit as pushed to its remote.
    pub pushed_branch: Option<String>,
    pub pushed_commit: Option<String>,
    /// The branch a git run works on and pushes, decided when it was submitted; `None` for
    /// other runs and for git runs stored before it was kept (derived from the name).
    #[serde(default)]
    pub run_branch: Option<String>,
}

impl RunRow {
    /// The run's status as the enum; `None` for a spelling this build does not know.
    pub fn run_status(&self) -> Option<RunStatus> {
        self.status.parse().ok()
    }

    /// Whether the run is in one of `statuses`.
    pub fn status_in(&self, statuses: &[RunStatus]) -> bool {
        self.run_status().is_some_and(|s| statuses.contains(&s))
    }

    /// Stores `status` in its database spelling.
    pub fn set_status(&mut self, status: RunStatus) {
        self.status = status.as_str().to_string();
    }
}

/// The scheduler's progress counters of one run (see the migration's comment). Serialized
/// only as an argument of Postgres' functions, without its absent values (as for [`StepRow`]).
#[derive(
    Debug, Clone, Default, Queryable, Selectable, Insertable, AsChangeset, Serialize, Deserialize,
)]
#[diesel(table_name = run_state)]
#[diesel(treat_none_as_null = true)]
pub struct RunStateRow {
    pub run_id: String,
    pub iterations_done: i32,
    pub verify_failures: i32,
    pub review_failures: i32,
    pub watchdog_rewrites: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runner_notes: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_worker_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_head: Option<String>,
    /// A terminal decision being carried out (artifacts, merge, cleanup), as JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finishing: Option<String>,
    pub event_seq: i64,
}

/// A step. Serialized only as an argument of Postgres' functions, without its absent values:
/// a key left out is null to `jsonb_populate_record`, and each key sent is one more for
/// Postgres to parse (migration `2026-12-08-000014_queued_by_columns`).
#[derive(Debug, Clone, Queryable, Selectable, Insertable, Serialize, Deserialize)]
#[diesel(table_name = steps)]
pub struct StepRow {
    pub id: String,
    pub run_id: String,
    pub seq: i32,
    pub phase: String,
    pub status: String,
    pub attempt: i32,
    pub infra_attempts: i32,
    pub is_final: bool,
    pub settled: bool,
    pub queued_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_tail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runner_notes: Option<String>,
    pub output_size: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_detected: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    pub lease_epoch: i64,
    pub required_labels: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preferred_worker_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_digest: Option<String>,
    /// The agent account whose concurrency limit the step counts against (see
    /// `domain::api_limit::account_key`); `None` for steps that run no agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
}

/// An implementation step as the watchdog compares it (its output, its status) and, for the
/// newest, the prompt a rewrite starts from. Postgres sends the prompt of the newest alone: the
/// older ones' prompts are never read, and whole rows were the largest part of a cycle's reads.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Serialize, Deserialize)]
#[diesel(table_name = steps)]
pub struct ImplStep {
    pub id: String,
    pub status: String,
    pub output_tail: Option<String>,
    pub prompt: Option<String>,
}

impl ImplStep {
    /// The step's status as the enum; `None` for a spelling this build does not know.
    pub fn step_status(&self) -> Option<StepStatus> {
        self.status.parse().ok()
    }
}

impl StepRow {
    /// A new step of `run_id` (a fresh id, attempt 1, nothing run, no lease, no labels, not
    /// final or settled), queued at `now`; callers set what differs.
    pub fn new(run_id: &str, seq: i32, phase: &str, status: &str, now: i64) -> StepRow {
        StepRow {
            id: new_id(),
            run_id: run_id.to_string(),
            seq,
            phase: phase.to_string(),
            status: status.to_string(),
            attempt: 1,
            infra_attempts: 0,
            is_final: false,
            settled: false,
            queued_at: now,
            started_at: None,
            ended_at: None,
            exit_code: None,
            prompt: None,
            prompt_path: None,
            output_path: None,
            output_tail: None,
            runner_notes: None,
            output_size: 0,
            completion_detected: None,
            worker_id: None,
            lease_epoch: 0,
            required_labels: String::new(),
            preferred_worker_id: None,
            failure_reason: None,
            completion_digest: None,
            account: None,
        }
    }

    /// The step's status as the enum; `None` for a spelling this build does not know.
    pub fn step_status(&self) -> Option<StepStatus> {
        self.status.parse().ok()
    }

    /// Stores `status` in its database spelling.
    pub fn set_status(&mut self, status: StepStatus) {
        self.status = status.as_str().to_string();
    }

    /// A postmortem step asked for a model of its own: kept, until the step completes, in
    /// `runner_notes` (a column only verification steps fill, at their completion), prefixed
    /// with [`POSTMORTEM_MODEL`]. See [`StepRow::set_postmortem_model`].
    pub fn postmortem_model(&self) -> Option<&str> {
        self.runner_notes.as_deref()?.strip_prefix(POSTMORTEM_MODEL)
    }

    /// Records the model a queued postmortem step runs its agent with.
    pub fn set_postmortem_model(&mut self, model: &str) {
        self.runner_notes = Some(format!("{POSTMORTEM_MODEL}{model}"));
    }
}

/// The prefix of the model a queued postmortem step keeps in `runner_notes`.
pub const POSTMORTEM_MODEL: &str = "postmortem-model:";

#[derive(Debug, Clone, Queryable, Selectable, Insertable, Serialize, Deserialize)]
#[diesel(table_name = events)]
pub struct EventRow {
    pub id: String,
    pub run_id: Option<String>,
    pub run_seq: Option<i64>,
    pub step_id: Option<String>,
    pub event_type: String,
    pub payload_json: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = artifacts)]
pub struct ArtifactRow {
    pub id: String,
    pub run_id: String,
    pub step_id: Option<String>,
    pub name: String,
    pub kind: String,
    pub size: i64,
    pub sha256: String,
    pub store: String,
    pub object_key: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = workers)]
pub struct WorkerRow {
    pub id: String,
    pub hostname: String,
    pub token_hash: String,
    pub instance_id: Option<String>,
    pub labels: String,
    pub slots: i32,
    pub version: String,
    pub status: String,
    pub registered_at: i64,
    pub last_heartbeat_at: i64,
    pub metrics_json: Option<String>,
}

impl WorkerRow {
    /// The worker's status as the enum; `None` for a spelling this build does not know.
    pub fn worker_status(&self) -> Option<WorkerStatus> {
        self.status.parse().ok()
    }
}

/// A step's lease (its worker, epoch and attempt, and its `lease_*` columns), as the `leases`
/// view has it.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Serialize, Deserialize)]
pub struct LeaseRow {
    pub step_id: String,
    pub worker_id: String,
    pub epoch: i64,
    pub granted_at: i64,
    pub expires_at: i64,
    pub attempt: i32,
}

impl LeaseRow {
    /// The lease of `step`, just leased to `worker_id` (at the step's epoch) at `now`, for
    /// `ttl_ms`.
    pub fn granted(step: &StepRow, worker_id: &str, now: i64, ttl_ms: i64) -> LeaseRow {
        LeaseRow {
            step_id: step.id.clone(),
            worker_id: worker_id.to_string(),
            epoch: step.lease_epoch,
            granted_at: now,
            expires_at: now + ttl_ms,
            attempt: step.attempt,
        }
    }
}

/// Labels are stored as one comma-joined, sorted, de-duplicated string ("" = none).
pub fn encode_labels(labels: &[String]) -> String {
    let mut v: Vec<&str> = labels
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    v.sort_unstable();
    v.dedup();
    v.join(",")
}

/// The inverse of [`encode_labels`].
pub fn decode_labels(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Whether a worker with `worker_labels` may run a step that requires `required` (encoded).
pub fn labels_match(required: &str, worker_labels: &[String]) -> bool {
    required
        .split(',')
        .filter(|l| !l.is_empty())
        .all(|l| worker_labels.iter().any(|w| w == l))
}

/// Every label set a worker with `labels` may run, encoded as steps store them
/// ([`encode_labels`]): all subsets of its labels. `None` above 10 labels (1,024 sets).
pub fn label_subsets(labels: &[String]) -> Option<Vec<String>> {
    let own: Vec<String> = decode_labels(&encode_labels(labels));
    if own.len() > 10 {
        return None;
    }
    let sets = (0u32..1 << own.len())
        .map(|mask| {
            let picked: Vec<String> = own
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, l)| l.clone())
                .collect();
            encode_labels(&picked)
        })
        .collect();
    Some(sets)
}

/// A fresh id: UUIDv7, hyphenated lowercase.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_worker_may_run_every_subset_of_its_labels_and_nothing_else() {
        let mut all = label_subsets(&set(&["linux", "gpu", "linux", " "])).expect("few");
        all.sort();
        assert_eq!(all, ["", "gpu", "gpu,linux", "linux"]);
        assert_eq!(label_subsets(&[]).expect("none"), [""]);
        let many: Vec<String> = (0..11).map(|i| format!("l{i}")).collect();
        assert!(
            label_subsets(&many).is_none(),
            "too many: the queue is asked instead"
        );
        // Each subset is exactly what a step requiring those labels stores.
        for s in label_subsets(&set(&["b", "a", "c"])).expect("few") {
            assert_eq!(s, encode_labels(&decode_labels(&s)));
            assert!(labels_match(&s, &set(&["a", "b", "c"])));
        }
    }

    #[test]
    fn rows_are_sent_without_their_absent_values_and_read_back_whole() {
        let mut step = StepRow::new("r1", 2, "implementation", "QUEUED", 5);
        step.prompt = Some("do the task".into());
        let json = serde_json::to_value(&step).expect("serialize");
        let keys = json.as_object().expect("object");
        assert!(keys.values().all(|v| !v.is_null()), "{json}");
        assert!(!keys.contains_key("exit_code") && keys.contains_key("prompt"));
        // What Postgres would fill in as null, serde reads back as None: nothing is lost.
        let back: StepRow = serde_json::from_value(json.clone()).expect("deserialize");
        assert_eq!(serde_json::to_value(&back).expect("serialize"), json);
        assert_eq!(back.exit_code, None);
        let state = RunStateRow {
            run_id: "r1".into(),
            last_worker_id: Some("w1".into()),
            ..Default::default()
        };
        let json = serde_json::to_value(&state).expect("serialize");
        assert!(json.get("pending_prompt").is_none() && json["last_worker_id"] == "w1");
        let back: RunStateRow = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back.pending_prompt, None);
    }
}
