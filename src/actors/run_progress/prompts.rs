//! Builds the prompt of an implementation or review step when it is queued: reads the
//! workspace's custom prompt and LEARNINGS.md (from disk for shared_fs runs, from the mirror at
//! the run's ref for git runs). The runner appends the plan's selected task when it runs the
//! step, because only the workspace knows which box is ticked by then. Blocking; called by
//! the decision (`decide.rs`) when it queues a step.

use crate::db::models::RunRow;
use crate::domain::prompt::{implementation_prompt, review_prompt, PromptInputs};
use crate::domain::run_config::RunConfig;
use crate::domain::StepPhase;
use crate::domain::WorkspaceSource;
use crate::workspace::mirror::Mirrors;
use std::path::Path;

/// Reads a workspace file: `path` is relative to the workspace root.
fn read_workspace_file(run: &RunRow, mirrors: &Mirrors, path: &str) -> Option<String> {
    if run.workspace_source == WorkspaceSource::Git.as_str() {
        let url = run.repo_url.as_deref()?;
        let sha = run.repo_ref.as_deref()?;
        let bytes = mirrors.read_file(url, sha, path).ok()??;
        return Some(String::from_utf8_lossy(&bytes).to_string());
    }
    let p = Path::new(path);
    let full = if p.is_absolute() {
        p.to_path_buf()
    } else {
        Path::new(&run.workspace_root).join(p)
    };
    std::fs::read_to_string(full).ok()
}

/// The prompt of a step of `phase` (None for phases that do not run the agent); `config` is
/// the run's, parsed once by the caller's decision.
pub fn build(
    run: &RunRow,
    config: &RunConfig,
    mirrors: &Mirrors,
    phase: StepPhase,
) -> Option<String> {
    if !phase.runs_agent() {
        return None;
    }
    let paths = run.paths();
    let template = config
        .prompt_file
        .as_deref()
        .filter(|p| !p.is_empty())
        .and_then(|p| read_workspace_file(run, mirrors, p))
        .or_else(|| read_workspace_file(run, mirrors, ".loop/prompt.txt"))
        .filter(|t| !t.trim().is_empty());
    let learnings_rel = format!("{}/LEARNINGS.md", config.specs_dir.trim_end_matches('/'));
    let learnings = read_workspace_file(run, mirrors, &learnings_rel).map(|_| {
        if paths.workdir.is_empty() {
            learnings_rel.clone()
        } else {
            Path::new(&paths.workdir)
                .join(&learnings_rel)
                .to_string_lossy()
                .to_string()
        }
    });
    let context: Vec<String> = config
        .context_files
        .iter()
        .map(|f| {
            if paths.workdir.is_empty() || Path::new(f).is_absolute() {
                f.clone()
            } else {
                Path::new(&paths.workdir)
                    .join(f)
                    .to_string_lossy()
                    .to_string()
            }
        })
        .collect();
    let inputs = PromptInputs {
        spec_path: &paths.spec,
        plan_path: paths.plan.as_deref(),
        runner_notes_path: &paths.runner_notes,
        context_files: &context,
        learnings_path: learnings.as_deref(),
        custom_template: template.as_deref(),
        completion_mode: config.completion_mode,
    };
    Some(match phase {
        StepPhase::Review => review_prompt(&inputs),
        _ => implementation_prompt(&inputs),
    })
}
