//! The two kinds of work a step does on a worker: run the agent (implementation and review:
//! runner notes in place, the plan's selected task appended to the prompt, `prompt.txt`
//! uploaded) or run the verify commands (runner notes on failure). Both spawn in their own
//! process group, known to the step's [`Active`]: stopped by the lease clock, killed at once
//! when the lease is lost, and TERM, grace, KILL when the step is cancelled. Each returns what
//! the step [`Produced`]; the step executor (`step.rs`) calls them.

use super::leftovers::{clear_pgid, record_pgid};
use super::state::{Active, Shared};
use super::workdir::Prepared;
use crate::api::Assignment;
use crate::domain::api_limit::ApiFailure;
use crate::domain::plan::select_task;
use crate::domain::prompt::{selected_task_section, task_under_review_section};
use crate::domain::usage::StepUsage;
use crate::domain::{AgentOutput, StepPhase};
use crate::exec::agent::{run_agent, AgentFiles, AgentRequest, RetryPolicy};
use crate::exec::verify::{run_verification, VerifyError, VerifyRequest};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a step produced.
pub struct Produced {
    pub ok: bool,
    pub exit_code: Option<i32>,
    pub tail: String,
    pub completion_detected: Option<bool>,
    pub failure: Option<String>,
    pub infra: bool,
    pub runner_notes: Option<String>,
    /// Files to upload as artifacts: (name, local path).
    pub files: Vec<(String, PathBuf)>,
    /// What the agent reported it spent (agent steps with JSON output only).
    pub usage: Option<StepUsage>,
    /// The agent API pushed back: the step is handed back, to be offered again after this
    /// pause (ms), instead of completing.
    pub pressure: Option<(ApiFailure, u64)>,
}

impl Produced {
    pub fn failed(reason: impl Into<String>, infra: bool) -> Self {
        Produced {
            ok: false,
            exit_code: None,
            tail: String::new(),
            completion_detected: None,
            failure: Some(reason.into()),
            infra,
            runner_notes: None,
            files: Vec::new(),
            usage: None,
            pressure: None,
        }
    }
}

/// The agent's environment: the worker's own variables that the allowlist admits, plus what
/// the assignment sets. Nothing else (no controller or store credentials).
pub fn agent_env(
    allow: &[String],
    extra: &std::collections::BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let admitted = |k: &str| {
        allow.iter().any(|a| match a.strip_suffix('*') {
            Some(prefix) => k.starts_with(prefix),
            None => a == k,
        })
    };
    let mut env: Vec<(String, String)> = std::env::vars().filter(|(k, _)| admitted(k)).collect();
    env.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// A path of the assignment, resolved against the step's workspace.
fn in_workspace(ws: &Path, p: &str) -> PathBuf {
    let path = Path::new(p);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        ws.join(path)
    }
}

fn secs(s: u64) -> Option<Duration> {
    (s > 0).then(|| Duration::from_secs(s))
}

/// Writes the runner notes the next agent reads (empty when the last verification passed).
async fn write_notes(a: &Assignment, ws: &Path) -> Result<(), String> {
    let Some(n) = &a.runner_notes else {
        return Ok(());
    };
    let path = in_workspace(ws, &n.path);
    let content = n.content.clone();
    tokio::task::spawn_blocking(move || {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, content)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("cannot write runner notes: {e}"))
}

/// The final prompt: the controller's text plus the plan's current task.
async fn final_prompt(a: &Assignment, ws: &Path) -> String {
    let mut prompt = a.prompt.clone().unwrap_or_default();
    let plan_text = match a.plan_path.as_deref().map(|p| in_workspace(ws, p)) {
        Some(p) => tokio::fs::read_to_string(p).await.ok(),
        None => None,
    };
    if let Some(task) = plan_text.and_then(|t| select_task(&t)) {
        match a.phase {
            StepPhase::Review => prompt.push_str(&task_under_review_section(&task)),
            _ => prompt.push_str(&selected_task_section(&task)),
        }
    }
    prompt
}

/// Runs the agent for an implementation or review step.
pub async fn agent(
    shared: &Shared,
    a: &Assignment,
    active: &Active,
    ws: &Prepared,
    dir: &Path,
    log: &Path,
) -> Produced {
    if let Err(e) = write_notes(a, &ws.dir).await {
        return Produced::failed(e, true);
    }
    let prompt = final_prompt(a, &ws.dir).await;
    let prompt_name = match a.phase {
        StepPhase::Review => "review-prompt.txt".to_string(),
        // Each postmortem step's prompt is kept, beside its log.
        StepPhase::Postmortem => format!("iter-{:02}-postmortem-prompt.txt", a.attempt),
        _ => "prompt.txt".to_string(),
    };
    let prompt_file = dir.join(&prompt_name);
    if let Err(e) = tokio::fs::write(&prompt_file, &prompt).await {
        return Produced::failed(format!("cannot write {prompt_name}: {e}"), true);
    }
    let stem = log.with_extension("");
    let files = AgentFiles {
        log: log.to_path_buf(),
        jsonl: stem.with_extension("jsonl"),
        tail: stem.with_extension("tail.txt"),
    };
    let req = AgentRequest {
        argv: a.agent.command.clone(),
        prompt,
        cwd: ws.dir.clone(),
        env: agent_env(&shared.cfg.agent_env, &a.agent.env),
        output: a.agent.output.unwrap_or(AgentOutput::Auto),
        completion_mode: a.completion_mode,
        timeout: secs(a.agent.timeout_sec),
        grace: shared.cfg.kill_grace,
        retry: RetryPolicy {
            retries: a.agent.retries,
            backoff: Duration::from_secs(a.agent.retry_backoff_sec),
        },
        files: files.clone(),
    };
    let work = shared.cfg.work_dir.clone();
    let step = a.step_id.clone();
    let result = run_agent(&req, &active.cancel, |pgid| {
        record_pgid(&work, &step, pgid as i32);
        active.group_started(pgid);
    })
    .await;
    active.group_ended();
    clear_pgid(&shared.cfg.work_dir, &a.step_id);
    let name = |p: &Path| {
        p.file_name()
            .map(|f| f.to_string_lossy().to_string())
            .unwrap_or_default()
    };
    let mut out_files = vec![
        (prompt_name.clone(), prompt_file),
        (name(&files.tail), files.tail.clone()),
    ];
    if files.jsonl.exists() {
        out_files.push((name(&files.jsonl), files.jsonl.clone()));
    }
    match result {
        Ok(r) => Produced {
            ok: r.succeeded(),
            exit_code: r.exit.as_ref().and_then(exit_code),
            tail: r.tail,
            completion_detected: Some(r.complete),
            failure: r.failure.map(|f| with_stderr(f, &r.stderr_tail)),
            infra: false,
            runner_notes: None,
            files: out_files,
            usage: r.usage,
            pressure: r.pressure.and_then(|p| {
                let now = chrono::Utc::now().timestamp_millis();
                p.pause_ms(now).map(|ms| (p, ms.max(0) as u64))
            }),
        },
        Err(e) => Produced::failed(format!("cannot run the agent: {e}"), false),
    }
}

fn with_stderr(failure: String, stderr: &str) -> String {
    let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
    match last {
        Some(l) => format!("{failure} ({})", l.trim()),
        None => failure,
    }
}

fn exit_code(e: &crate::exec::process::Exit) -> Option<i32> {
    match e {
        crate::exec::process::Exit::Code(c) => Some(*c),
        crate::exec::process::Exit::Signal(_) => Some(-1),
        _ => None,
    }
}

/// Runs the verify commands of a verification step.
pub async fn verify(
    shared: &Shared,
    a: &Assignment,
    active: &Active,
    ws: &Prepared,
    dir: &Path,
    log: &Path,
) -> Produced {
    let spec = a.verify.clone().unwrap_or(crate::api::VerifySpec {
        commands: vec![],
        timeout_sec: 0,
    });
    let req = VerifyRequest {
        cmds: spec.commands,
        cwd: ws.dir.clone(),
        env: agent_env(&shared.cfg.agent_env, &a.agent.env),
        timeout: secs(spec.timeout_sec),
        grace: shared.cfg.kill_grace,
        log: log.to_path_buf(),
    };
    let work = shared.cfg.work_dir.clone();
    let step = a.step_id.clone();
    let result = run_verification(&req, &active.cancel, |pgid| {
        record_pgid(&work, &step, pgid as i32);
        active.group_started(pgid);
    })
    .await;
    active.group_ended();
    clear_pgid(&shared.cfg.work_dir, &a.step_id);
    match result {
        Ok(r) => {
            let mut files = Vec::new();
            if let Some(notes) = &r.runner_notes {
                let p = dir.join("runner-notes.txt");
                if tokio::fs::write(&p, notes).await.is_ok() {
                    files.push(("runner-notes.txt".to_string(), p));
                }
            }
            let tail = crate::exec::tail::last_lines(
                &tokio::fs::read_to_string(log).await.unwrap_or_default(),
                200,
            )
            .to_string();
            Produced {
                ok: r.passed,
                exit_code: Some(if r.passed { 0 } else { 1 }),
                tail,
                completion_detected: None,
                failure: (!r.passed).then(|| "verification failed".to_string()),
                infra: false,
                runner_notes: r.runner_notes,
                files,
                usage: None,
                pressure: None,
            }
        }
        Err(VerifyError::Cancelled) => Produced::failed("cancelled", false),
        Err(e) => Produced::failed(format!("cannot run verification: {e}"), false),
    }
}
