//! Turns a leased step and its run into the `Assignment` a worker executes, and knows where a
//! run's files are from the point of view of the step (worktree for shared_fs runs, paths
//! relative to the clone for git runs).

use crate::api::{
    AgentSpec, Assignment, Checkpoint, RunWorktree, RunnerNotes, VerifySpec, WorkspaceSpec,
};
use crate::db::models::{LeaseRow, RunRow, RunStateRow, StepRow};
use crate::domain::run_config::RunConfig;
use crate::domain::time::rfc3339;
use crate::domain::{StepPhase, WorkspaceSource};
use std::collections::BTreeMap;
use std::path::Path;

/// Where a run's files are, as the agent sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunPaths {
    /// The directory the step works in ("" = the worker's clone of a git run).
    pub workdir: String,
    pub spec: String,
    pub plan: Option<String>,
    pub runner_notes: String,
}

/// The runner-notes file of a git run, relative to the clone (excluded from commits).
pub const GIT_RUNNER_NOTES: &str = ".loop/runner-notes.txt";

/// The run's parsed effective config (the defaults when it cannot be read).
pub fn run_config(run: &RunRow) -> RunConfig {
    run.config_json
        .as_deref()
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_default()
}

/// The run's worktree, when it has one.
pub fn worktree(run: &RunRow) -> Option<RunWorktree> {
    run.worktree_json
        .as_deref()
        .and_then(|j| serde_json::from_str(j).ok())
}

/// Re-roots `path` from the primary checkout into the worktree.
fn remap(path: &str, root: &str, worktree: &str) -> String {
    let p = Path::new(path);
    let rel = if p.is_absolute() {
        match p.strip_prefix(root) {
            Ok(r) => r,
            Err(_) => return path.to_string(),
        }
    } else {
        p
    };
    Path::new(worktree).join(rel).to_string_lossy().to_string()
}

/// The step-side paths of a run.
pub fn run_paths(run: &RunRow) -> RunPaths {
    if run.workspace_source == WorkspaceSource::Git.as_str() {
        return RunPaths {
            workdir: String::new(),
            spec: run.spec_path.clone(),
            plan: run.plan_path.clone(),
            runner_notes: GIT_RUNNER_NOTES.to_string(),
        };
    }
    let root = run.workspace_root.as_str();
    let wt = worktree(run)
        .map(|w| w.worktree_path)
        .unwrap_or_else(|| root.to_string());
    RunPaths {
        spec: remap(&run.spec_path, root, &wt),
        plan: run.plan_path.as_deref().map(|p| remap(p, root, &wt)),
        runner_notes: Path::new(root)
            .join("logs/loop")
            .join(format!("run-{}", run.id))
            .join("runner-notes.txt")
            .to_string_lossy()
            .to_string(),
        workdir: wt,
    }
}

/// Builds the assignment of a freshly leased step.
pub fn build(
    run: &RunRow,
    state: &RunStateRow,
    step: &StepRow,
    lease: &LeaseRow,
    output_offset: u64,
) -> Result<Assignment, String> {
    let config = run_config(run);
    let phase: StepPhase = step.phase.parse().map_err(|e| format!("{e}"))?;
    let paths = run_paths(run);
    let workspace = if run.workspace_source == WorkspaceSource::Git.as_str() {
        WorkspaceSpec::Git {
            repo_url: run.repo_url.clone().unwrap_or_default(),
            repo_ref: run.repo_ref.clone().unwrap_or_default(),
            run_branch: git_run_branch(run, &config),
            checkpoint: match (&state.checkpoint_name, &state.checkpoint_head) {
                (Some(name), Some(head)) => Some(Checkpoint {
                    kind: "git_bundle".into(),
                    name: name.clone(),
                    head: head.clone(),
                }),
                _ => None,
            },
        }
    } else {
        WorkspaceSpec::SharedFs {
            path: paths.workdir.clone(),
        }
    };
    let command = config.agent_argv().map_err(|e| e.to_string())?;
    let env = BTreeMap::from([
        ("LOOPD_RUN_ID".to_string(), run.id.clone()),
        ("LOOPD_STEP_ID".to_string(), step.id.clone()),
        ("LOOPD_PHASE".to_string(), phase.as_str().to_string()),
    ]);
    let runner_notes = (phase == StepPhase::Implementation).then(|| RunnerNotes {
        path: paths.runner_notes.clone(),
        content: state.runner_notes.clone().unwrap_or_default(),
    });
    Ok(Assignment {
        step_id: step.id.clone(),
        run_id: run.id.clone(),
        phase,
        attempt: step.attempt.max(0) as u32,
        epoch: lease.epoch,
        lease_expires_at: rfc3339(lease.expires_at),
        workspace,
        prompt: phase
            .runs_agent()
            .then(|| step.prompt.clone().unwrap_or_default()),
        agent: AgentSpec {
            command,
            timeout_sec: config.claude_timeout_sec,
            env,
            output: Some(config.agent_output),
            retries: config.claude_retries,
            retry_backoff_sec: config.claude_retry_backoff_sec,
        },
        verify: (phase == StepPhase::Verification).then(|| VerifySpec {
            commands: config.verify_cmds.clone(),
            timeout_sec: config.verify_timeout_sec,
        }),
        completion_mode: config.completion_mode,
        plan_path: if phase == StepPhase::Implementation {
            paths.plan
        } else {
            None
        },
        runner_notes,
        run_name: run.name.clone(),
        output_offset,
    })
}

/// The branch a git run works on.
pub fn git_run_branch(run: &RunRow, config: &RunConfig) -> String {
    match worktree(run) {
        Some(w) => w.run_branch,
        None => format!(
            "{}{}",
            config.run_branch_prefix,
            crate::workspace::naming::slug(&run.name)
        ),
    }
}
