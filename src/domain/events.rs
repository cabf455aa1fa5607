//! Event names and payloads (API.md §3). Payloads are flat JSON objects with the field names
//! existing clients read.

use serde_json::{json, Value};

pub const RUN_CREATED: &str = "RUN_CREATED";
pub const RUN_STARTED: &str = "RUN_STARTED";
pub const RUN_PAUSED: &str = "RUN_PAUSED";
pub const RUN_RESUMED: &str = "RUN_RESUMED";
pub const RUN_RETRIED: &str = "RUN_RETRIED";
pub const RUN_COMPLETED: &str = "RUN_COMPLETED";
pub const RUN_FAILED: &str = "RUN_FAILED";
pub const RUN_CANCELED: &str = "RUN_CANCELED";
pub const STEP_QUEUED: &str = "STEP_QUEUED";
pub const STEP_STARTED: &str = "STEP_STARTED";
pub const STEP_FINISHED: &str = "STEP_FINISHED";
pub const STEP_FAILED: &str = "STEP_FAILED";
pub const WATCHDOG_REWRITE: &str = "WATCHDOG_REWRITE";
pub const WORKTREE_CREATED: &str = "WORKTREE_CREATED";
pub const WORKTREE_REMOVED: &str = "WORKTREE_REMOVED";
pub const WORKER_REGISTERED: &str = "WORKER_REGISTERED";
pub const WORKER_HEARTBEAT: &str = "WORKER_HEARTBEAT";
pub const WORKER_OFFLINE: &str = "WORKER_OFFLINE";
pub const WORKER_DRAINING: &str = "WORKER_DRAINING";
pub const LEASE_GRANTED: &str = "LEASE_GRANTED";
pub const LEASE_EXPIRED: &str = "LEASE_EXPIRED";
pub const LEASE_RELEASED: &str = "LEASE_RELEASED";
pub const ARTIFACT_STORED: &str = "ARTIFACT_STORED";

/// Events after which a run's event stream closes.
pub fn is_terminal(event_type: &str) -> bool {
    matches!(event_type, RUN_COMPLETED | RUN_FAILED | RUN_CANCELED)
}

pub fn run_created(
    run_id: &str,
    name: &str,
    name_source: &str,
    spec_path: &str,
    plan_path: Option<&str>,
) -> Value {
    json!({"run_id": run_id, "name": name, "name_source": name_source,
           "spec_path": spec_path, "plan_path": plan_path})
}

pub fn run_started(run_id: &str, worker_id: Option<&str>) -> Value {
    json!({"run_id": run_id, "worker_id": worker_id})
}

pub fn run_only(run_id: &str) -> Value {
    json!({"run_id": run_id})
}

pub fn run_completed(run_id: &str, mode: &str) -> Value {
    json!({"run_id": run_id, "mode": mode})
}

pub fn run_failed(run_id: &str, reason: &str) -> Value {
    json!({"run_id": run_id, "reason": reason})
}

pub fn step_queued(step_id: &str, phase: &str, attempt: i32) -> Value {
    json!({"step_id": step_id, "phase": phase, "attempt": attempt})
}

pub fn step_started(
    step_id: &str,
    phase: &str,
    attempt: i32,
    worker_id: &str,
    epoch: i64,
) -> Value {
    json!({"step_id": step_id, "phase": phase, "attempt": attempt,
           "worker_id": worker_id, "epoch": epoch})
}

pub fn step_finished(step_id: &str, exit_code: i32, duration_ms: u64, output_path: &str) -> Value {
    json!({"step_id": step_id, "exit_code": exit_code, "duration_ms": duration_ms,
           "output_path": output_path})
}

pub fn step_failed(step_id: &str, exit_code: Option<i32>, reason: &str) -> Value {
    json!({"step_id": step_id, "exit_code": exit_code, "reason": reason})
}

pub fn watchdog_rewrite(step_id: &str, signal: &str, before: &str, after: &str) -> Value {
    json!({"step_id": step_id, "signal": signal, "prompt_before": before, "prompt_after": after})
}

pub fn worktree(run_id: &str, path: &str, run_branch: Option<&str>) -> Value {
    json!({"run_id": run_id, "provider": "git", "worktree_path": path, "run_branch": run_branch})
}

pub fn worker_registered(worker_id: &str, hostname: &str) -> Value {
    json!({"worker_id": worker_id, "hostname": hostname})
}

pub fn worker_heartbeat(worker_id: &str, status: &str, metrics: &Value) -> Value {
    json!({"worker_id": worker_id, "status": status, "metrics": metrics})
}

pub fn worker_offline(worker_id: &str, reason: &str) -> Value {
    json!({"worker_id": worker_id, "reason": reason})
}

pub fn lease_granted(step_id: &str, worker_id: &str, epoch: i64, expires_at: &str) -> Value {
    json!({"step_id": step_id, "worker_id": worker_id, "epoch": epoch, "expires_at": expires_at})
}

pub fn lease_expired(step_id: &str, worker_id: &str, epoch: i64) -> Value {
    json!({"step_id": step_id, "worker_id": worker_id, "epoch": epoch})
}

pub fn lease_released(step_id: &str, worker_id: &str, epoch: i64, reason: &str) -> Value {
    json!({"step_id": step_id, "worker_id": worker_id, "epoch": epoch, "reason": reason})
}

pub fn artifact_stored(step_id: Option<&str>, name: &str, size: u64, sha256: &str) -> Value {
    json!({"step_id": step_id, "name": name, "size": size, "sha256": sha256})
}
