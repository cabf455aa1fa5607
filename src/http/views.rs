//! Database rows turned into the wire objects of API.md (every key present, enums spelled as
//! clients expect).

use crate::api::{AccountInfo, ArtifactInfo, HeldLease, Run, Step, WorkerInfo};
use crate::db::accounts::AccountView;
use crate::db::models::{decode_labels, ArtifactRow, LeaseRow, RunRow, StepRow, WorkerRow};
use crate::domain::time::rfc3339;
use crate::domain::*;

fn parse<T: std::str::FromStr>(s: &str, fallback: T) -> T {
    s.parse().unwrap_or(fallback)
}

pub fn run(r: &RunRow) -> Run {
    Run {
        id: r.id.clone(),
        name: r.name.clone(),
        name_source: parse(&r.name_source, NameSource::SpecSlug),
        status: parse(&r.status, RunStatus::Pending),
        workspace_root: r.workspace_root.clone(),
        spec_path: r.spec_path.clone(),
        plan_path: r.plan_path.clone(),
        worktree: r.worktree(),
        worktree_cleanup_status: r.worktree_cleanup_status.clone(),
        worktree_cleaned_at: r.worktree_cleaned_at.map(rfc3339),
        config_json: r.config_json.clone(),
        created_at: rfc3339(r.created_at),
        updated_at: rfc3339(r.updated_at),
        review_status: parse(&r.review_status, ReviewStatus::Pending),
        review_action_at: r.review_action_at.map(rfc3339),
        pr_url: r.pr_url.clone(),
        merge_commit: r.merge_commit.clone(),
        workspace_source: parse(&r.workspace_source, WorkspaceSource::SharedFs),
        repo_url: r.repo_url.clone(),
        repo_ref: r.repo_ref.clone(),
        artifact_store: parse(&r.artifact_store, StoreKind::Fs),
        labels: decode_labels(&r.labels),
        waiting_reason: r.waiting_reason.clone(),
        failure_reason: r.failure_reason.clone(),
        pushed_branch: r.pushed_branch.clone(),
        pushed_commit: r.pushed_commit.clone(),
        run_branch: (r.workspace_source == WorkspaceSource::Git.as_str())
            .then(|| r.git_run_branch(&r.config())),
        usage: None,
    }
}

pub fn step(s: &StepRow, lease_expires_at: Option<i64>) -> Step {
    Step {
        id: s.id.clone(),
        run_id: s.run_id.clone(),
        phase: parse(&s.phase, StepPhase::Implementation),
        status: parse(&s.status, StepStatus::Queued),
        attempt: s.attempt.max(0) as u32,
        started_at: s.started_at.map(rfc3339),
        ended_at: s.ended_at.map(rfc3339),
        exit_code: s.exit_code,
        prompt_path: s.prompt_path.clone(),
        output_path: s.output_path.clone(),
        worker_id: s.worker_id.clone(),
        lease_epoch: (s.lease_epoch > 0).then_some(s.lease_epoch),
        lease_expires_at: lease_expires_at.map(rfc3339),
        infra_attempts: s.infra_attempts.max(0) as u32,
        failure_reason: s.failure_reason.clone(),
        usage: None,
    }
}

pub fn artifact(a: &ArtifactRow) -> ArtifactInfo {
    ArtifactInfo {
        name: a.name.clone(),
        kind: a.kind.clone(),
        step_id: a.step_id.clone(),
        size: a.size.max(0) as u64,
        sha256: a.sha256.clone(),
        created_at: rfc3339(a.created_at),
    }
}

/// An agent account's limit as shown at `now` (a pause that ended is not shown).
pub fn account(a: &AccountView, now: i64) -> AccountInfo {
    AccountInfo {
        account: a.account.clone(),
        limit: a.state.limit,
        max_concurrent: a.state.max,
        in_use: a.in_use,
        last_signal: a.state.last_signal.clone(),
        last_signal_at: a.state.last_signal_at.map(rfc3339),
        paused_until: a.state.pause_until.filter(|p| *p > now).map(rfc3339),
    }
}

pub fn worker(w: &WorkerRow, leases: &[LeaseRow]) -> WorkerInfo {
    WorkerInfo {
        id: w.id.clone(),
        hostname: w.hostname.clone(),
        status: parse(&w.status, WorkerStatus::Offline),
        labels: decode_labels(&w.labels),
        slots: w.slots.max(0) as u32,
        version: w.version.clone(),
        registered_at: rfc3339(w.registered_at),
        last_heartbeat_at: rfc3339(w.last_heartbeat_at),
        leases: leases
            .iter()
            .map(|l| HeldLease {
                step_id: l.step_id.clone(),
                epoch: l.epoch,
            })
            .collect(),
    }
}
