//! Turns a leased step and its run into the `Assignment` a worker executes: the workspace
//! (the run's worktree, or the repository, run branch and newest checkpoint of a git run),
//! the agent, the verify commands, the prompt and the runner notes. Called by the lease
//! service when it grants a lease; where the run's files are comes from `run_progress::run`.

use crate::api::{AgentSpec, Assignment, Checkpoint, RunnerNotes, VerifySpec, WorkspaceSpec};
use crate::db::models::{LeaseRow, RunRow, RunStateRow, StepRow};
use crate::domain::time::rfc3339;
use crate::domain::{StepPhase, WorkspaceSource};
use std::collections::BTreeMap;

/// Builds the assignment of a freshly leased step.
pub fn build(
    run: &RunRow,
    state: &RunStateRow,
    step: &StepRow,
    lease: &LeaseRow,
    output_offset: u64,
) -> Result<Assignment, String> {
    let config = run.config();
    let phase: StepPhase = step.phase.parse().map_err(|e| format!("{e}"))?;
    let paths = run.paths();
    let workspace = if run.workspace_source == WorkspaceSource::Git.as_str() {
        WorkspaceSpec::Git {
            repo_url: run.repo_url.clone().unwrap_or_default(),
            repo_ref: run.repo_ref.clone().unwrap_or_default(),
            run_branch: run.git_run_branch(&config),
            checkpoint: match (&state.checkpoint_name, &state.checkpoint_head) {
                (Some(name), Some(head)) => Some(Checkpoint {
                    kind: "git_bundle".into(),
                    name: name.clone(),
                    head: head.clone(),
                }),
                _ => None,
            },
            credential: None,
        }
    } else if phase == StepPhase::Postmortem {
        // The analysis looks at the workspace, as the existing daemon's did (the run's
        // worktree may be gone after a merge or scrap).
        WorkspaceSpec::SharedFs {
            path: run.workspace_root.clone(),
        }
    } else {
        WorkspaceSpec::SharedFs {
            path: paths.workdir.clone(),
        }
    };
    let command = match step.postmortem_model() {
        Some(model) if phase == StepPhase::Postmortem => config.agent_argv_with_model(model),
        _ => config.agent_argv(),
    }
    .map_err(|e| e.to_string())?;
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
            .spawns_agent()
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
