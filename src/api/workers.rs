//! Wire types of the worker API (API.md §2): registration, heartbeats, claims, assignments,
//! and what a worker writes for a step. Shared by the controller's routes, the worker's HTTP
//! control plane and the local control plane of the single role.

use crate::domain::{
    AgentOutput, CompletionMode, LeaseAction, StepOutcome, StepPhase, WorkerStatus,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a worker can do. A registration without it gets the defaults: no labels, one slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default = "one")]
    pub slots: u32,
    #[serde(default)]
    pub version: String,
}

fn one() -> u32 {
    1
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            labels: Vec::new(),
            slots: one(),
            version: String::new(),
        }
    }
}

/// `POST /workers/register` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub hostname: String,
    #[serde(default)]
    pub capabilities: Capabilities,
    /// A random id of the worker process. When given, every later request must carry it in the
    /// `X-Loopd-Instance` header: a second process using a copied token is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
}

/// `POST /workers/register` answer (the token is shown only here).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub worker_id: String,
    pub token: String,
    pub heartbeat_interval_ms: u64,
    pub lease_ttl_ms: u64,
    /// A worker silent for this long is marked offline and its leases are taken back (before
    /// their TTL). An addition: the worker's lease clock runs on the shorter of the two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_offline_after_ms: Option<u64>,
}

/// A lease as a worker reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldLease {
    pub step_id: String,
    pub epoch: i64,
}

/// `POST /workers/{id}/heartbeat` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    pub status: WorkerStatus,
    #[serde(default)]
    pub metrics: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub leases: Vec<HeldLease>,
}

/// The controller's word on one reported lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseVerdict {
    pub step_id: String,
    pub epoch: i64,
    pub expires_at: Option<String>,
    pub action: LeaseAction,
}

/// `POST /workers/{id}/heartbeat` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    pub leases: Vec<LeaseVerdict>,
}

/// `POST /workers/{id}/claim` body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClaimRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
}

/// A git checkpoint: a bundle artifact of the run and the commit it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    #[serde(default = "git_bundle")]
    pub kind: String,
    pub name: String,
    pub head: String,
}

fn git_bundle() -> String {
    "git_bundle".to_string()
}

/// Where the step works.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum WorkspaceSpec {
    SharedFs {
        path: String,
    },
    Git {
        repo_url: String,
        repo_ref: String,
        run_branch: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        checkpoint: Option<Checkpoint>,
        /// The controller's https credential for the repository's host, when
        /// `git.worker_credentials = "from_controller"`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        credential: Option<HandedCredential>,
    },
}

/// An https credential the controller hands to a worker with an assignment: used for that
/// step's fetches only, never written to disk, logged or given to the agent.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandedCredential {
    pub host: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for HandedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandedCredential")
            .field("host", &self.host)
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// What to spawn for implementation and review steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentSpec {
    /// argv without the prompt; the prompt is appended as the last argument.
    pub command: Vec<String>,
    /// 0 = no timeout.
    pub timeout_sec: u64,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub output: Option<AgentOutput>,
    /// Extra attempts after a failure (`claude_retries`).
    #[serde(default)]
    pub retries: u32,
    /// Flat sleep between retries (`claude_retry_backoff_sec`).
    #[serde(default)]
    pub retry_backoff_sec: u64,
}

/// What to run for verification steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifySpec {
    pub commands: Vec<String>,
    /// 0 = no timeout.
    pub timeout_sec: u64,
}

/// Runner notes the step's workspace must hold before the agent starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunnerNotes {
    /// Absolute, or relative to the workspace root.
    pub path: String,
    pub content: String,
}

/// A leased step: everything a worker needs to execute it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub step_id: String,
    pub run_id: String,
    pub phase: StepPhase,
    pub attempt: u32,
    pub epoch: i64,
    pub lease_expires_at: String,
    pub workspace: WorkspaceSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    pub agent: AgentSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifySpec>,
    pub completion_mode: CompletionMode,
    // Additions to the contract, all optional for older peers.
    /// The plan (relative to the workspace, or absolute): the runner appends its first open task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_notes: Option<RunnerNotes>,
    /// The run's name (for checkpoint commit messages and logs).
    #[serde(default)]
    pub run_name: String,
    /// Output streamed before this lease (by an earlier epoch) is not resent.
    #[serde(default)]
    pub output_offset: u64,
}

/// `POST /steps/{id}/output` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputChunk {
    pub epoch: i64,
    pub offset: u64,
    pub content: String,
}

/// `POST /steps/{id}/output` answer: how many bytes the controller now holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputAck {
    pub next_offset: u64,
}

/// `POST /steps/{id}/events` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepEventRequest {
    pub epoch: i64,
    pub event_type: String,
    #[serde(default)]
    pub payload: serde_json::Value,
}

/// An artifact a worker produced (or uploaded itself to a shared store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRef {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// `PUT /steps/{id}/artifacts/{name}` query.
#[derive(Debug, Clone, Deserialize)]
pub struct ArtifactUploadQuery {
    pub epoch: i64,
}

/// `POST /steps/{id}/release` body (an addition: drain hands a lease back).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseRequest {
    pub epoch: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The step is not offered again for this long (ms): the agent API pushed back (rate
    /// limit, overload, usage limit). An addition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// `POST /steps/{id}/complete` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompleteRequest {
    pub epoch: i64,
    pub status: StepOutcome,
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub output_tail: String,
    #[serde(default)]
    pub artifacts: Vec<ArtifactRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Checkpoint>,
    // Additions.
    /// Whether the completion token was found, decided on the full output by the worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_detected: Option<bool>,
    /// Why the step failed, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// For verification: the runner notes written on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_notes: Option<String>,
    #[serde(default)]
    pub duration_ms: u64,
    /// The failure is the infrastructure's (artifact store, workspace), not the agent's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub infra_failure: bool,
    /// What the agent reported it spent (its final `result` event); none for text output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::domain::usage::StepUsage>,
    /// Claim this worker's next step in the same request, without waiting; the answer's
    /// `next` holds it. Not part of the completion itself: a repeat that differs only here
    /// is the same completion.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub claim_next: bool,
}

/// `POST /steps/{id}/complete` answer: `{}`, or, when the completion asked to claim the next
/// step and one was leased, `{"next": Assignment}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompleteResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<Assignment>,
}

/// One worker in `GET /workers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub id: String,
    pub hostname: String,
    pub status: WorkerStatus,
    pub labels: Vec<String>,
    pub slots: u32,
    pub version: String,
    pub registered_at: String,
    pub last_heartbeat_at: String,
    pub leases: Vec<HeldLease>,
}

/// `{"workers": [WorkerInfo], "accounts": [AccountInfo]}` (`accounts` an addition, left out
/// when there are none).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkersEnvelope {
    pub workers: Vec<WorkerInfo>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accounts: Vec<AccountInfo>,
}

/// An agent account's concurrency limit, as `GET /workers` shows it (`[api_limits]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountInfo {
    /// `<model>:<program>:<hash of the agent command>`.
    pub account: String,
    /// Steps of the account that may run at once now.
    pub limit: i32,
    pub max_concurrent: i32,
    /// Steps of the account running now.
    pub in_use: i64,
    /// The last push-back: `rate_limited`, `overloaded` or `usage_limit`, and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_signal_at: Option<String>,
    /// No step of the account is given out before this (a usage limit's reset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<String>,
}
