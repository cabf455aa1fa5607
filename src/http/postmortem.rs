//! `POST /runs/{id}/postmortem {model?, prompt_only?}` and `GET /runs/{id}/postmortem`
//! (docs/review.md "Postmortem"): the existing daemon's analysis of a run — a git snapshot and
//! three prompts in `<ws>/logs/loop/run-<id>/analysis/`, then three agent invocations
//! (spec compliance, run quality, then a summary of both) whose outputs become
//! `spec-compliance.md`, `run-quality.md` and `summary.md`. Each invocation is a step of the
//! run with phase `postmortem`, claimed like any other step (by a worker in distributed mode;
//! its log and prompt are artifacts); the route queues them one after the other and answers
//! when the last has ended, as the existing daemon's synchronous calls did.

use super::error::ApiError;
use super::extract::Id;
use super::review::{load_run, optional_json};
use super::state::AppState;
use crate::actors::lease::QueueChanged;
use crate::api::{PostmortemRequest, REVIEW_DIFF_NAME};
use crate::db::models::{RunRow, StepRow};
use crate::db::{self, DbError};
use crate::domain::events as ev;
use crate::domain::time::now_ms;
use crate::domain::{RunStatus, StepPhase, StepStatus};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The files of the analysis directory, in the order `GET` lists them.
pub const ANALYSIS_FILES: [&str; 10] = [
    "run-quality-prompt.txt",
    "run-quality.md",
    "spec-compliance-prompt.txt",
    "spec-compliance.md",
    "summary-prompt.txt",
    "summary.md",
    "git-status.txt",
    "git-last-commit.txt",
    "git-last-commit.patch",
    "git-diff.patch",
];

/// Longest report text a summary prompt quotes.
const QUOTE_CAP: usize = 64 * 1024;

/// One of the three analyses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    SpecCompliance,
    RunQuality,
    Summary,
}

impl Kind {
    /// The file stem (`spec-compliance`) and the JSON key (`spec_compliance`).
    fn stem(self) -> &'static str {
        match self {
            Kind::SpecCompliance => "spec-compliance",
            Kind::RunQuality => "run-quality",
            Kind::Summary => "summary",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Kind::SpecCompliance => "spec_compliance",
            Kind::RunQuality => "run_quality",
            Kind::Summary => "summary",
        }
    }
}

/// `<ws>/<log_dir>/run-<id>` (`logs/loop` by default): where the existing daemon kept a run's
/// files (None when the workspace is not a directory on this host, as for a git run's label).
pub fn run_dir(run: &RunRow) -> Option<PathBuf> {
    Path::new(&run.workspace_root)
        .is_dir()
        .then(|| run.config().run_log_dir(&run.workspace_root, &run.id))
}

fn analysis_dir(run: &RunRow) -> Option<PathBuf> {
    run_dir(run).map(|d| d.join("analysis"))
}

fn show(p: &Path) -> String {
    p.to_string_lossy().to_string()
}

/// What the prompts tell the agent about the run.
struct Context {
    header: String,
    files: String,
}

fn context(run: &RunRow, dir: Option<&Path>) -> Context {
    let mut header = format!("Run {} (\"{}\"), status {}", run.id, run.name, run.status);
    if let Some(r) = &run.failure_reason {
        header.push_str(&format!(", failure reason: {r}"));
    }
    let mut files = format!("- Spec: {}\n", run.spec_path);
    if let Some(p) = &run.plan_path {
        files.push_str(&format!("- Plan: {p}\n"));
    }
    if let Some(w) = run.worktree() {
        files.push_str(&format!(
            "- The run's branch: {} (from {}; worktree {})\n",
            w.run_branch, w.base_branch, w.worktree_path
        ));
    }
    if let (Some(d), Some(a)) = (run_dir(run), dir) {
        files.push_str(&format!(
            "- The run's logs: {} (report.tsv, summary.json, iter-NN-<phase>.log, runner-notes.txt, {REVIEW_DIFF_NAME})\n",
            show(&d)
        ));
        files.push_str(&format!(
            "- Git state: {} (git-status.txt, git-last-commit.txt, git-last-commit.patch, git-diff.patch)\n",
            show(a)
        ));
    }
    Context { header, files }
}

/// The prompt of one analysis; the summary quotes the other two reports.
fn prompt(kind: Kind, ctx: &Context, reports: &[(Kind, String)]) -> String {
    let task = match kind {
        Kind::SpecCompliance => {
            "Check how far the work of this run meets its specification: list each requirement \
             as met, partly met or missed, with the evidence (files, commits, logs), then the \
             follow-ups that remain."
        }
        Kind::RunQuality => {
            "Assess how the run went: iterations, failed steps and verifications, watchdog \
             interventions, wasted effort, and what in the spec, plan or configuration would \
             make the next run go better."
        }
        Kind::Summary => {
            "Summarise the two reports below for a reviewer deciding whether to merge the run: \
             the verdict first, then the main findings and the follow-ups."
        }
    };
    let mut p = format!(
        "loopd postmortem: {}\n\n{}.\n\n{task}\n\nWhat to look at:\n{}\nDo not change any file; answer in Markdown.\n",
        kind.stem(),
        ctx.header,
        ctx.files
    );
    for (k, text) in reports {
        let cut = match text.char_indices().nth(QUOTE_CAP) {
            Some((i, _)) => &text[..i],
            None => text,
        };
        p.push_str(&format!("\n## Report: {}\n\n{cut}\n", k.stem()));
    }
    p
}

/// Runs `git args` in `dir`; its stdout, else what went wrong.
fn git_text(dir: &Path, args: &[&str]) -> String {
    match std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).to_string(),
        Ok(o) => format!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("cannot run git: {e}"),
    }
}

/// The git snapshot: status and uncommitted changes of the run's worktree (else of the
/// workspace), and the newest commit of the run branch (else of HEAD).
fn git_snapshot(run: &RunRow, out: &Path) -> std::io::Result<()> {
    let ws = PathBuf::from(&run.workspace_root);
    let wt = run.worktree();
    let cwd = wt
        .as_ref()
        .map(|w| PathBuf::from(&w.worktree_path))
        .filter(|p| p.is_dir())
        .unwrap_or_else(|| ws.clone());
    let branch = wt.map(|w| w.run_branch).filter(|b| {
        std::process::Command::new("git")
            .args([
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("refs/heads/{b}"),
            ])
            .current_dir(&ws)
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let head = branch.unwrap_or_else(|| "HEAD".into());
    let files = [
        ("git-status.txt", git_text(&cwd, &["status", "-sb"])),
        (
            "git-last-commit.txt",
            git_text(&ws, &["log", "-1", "--stat", &head]),
        ),
        (
            "git-last-commit.patch",
            git_text(&ws, &["show", "-1", "--stat", "--patch", &head]),
        ),
        ("git-diff.patch", git_text(&cwd, &["diff"])),
    ];
    for (name, text) in files {
        std::fs::write(out.join(name), text)?;
    }
    Ok(())
}

fn io_error(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("{what}: {e}"))
}

/// Writes `text` to `dir/name` on the blocking pool.
async fn write_file(dir: &Path, name: &str, text: String) -> Result<PathBuf, ApiError> {
    let path = dir.join(name);
    let p = path.clone();
    tokio::task::spawn_blocking(move || std::fs::write(&p, text))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| io_error(&format!("cannot write {}", path.display()), e))?;
    Ok(path)
}

/// `POST /runs/{id}/postmortem`.
pub async fn create(
    st: web::Data<AppState>,
    id: Id,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let p: PostmortemRequest = optional_json(&st, &req, &body)?;
    let run = load_run(&st, &id.0).await?;
    let model = p
        .model
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| run.config().model);
    let dir = analysis_dir(&run);
    let ctx = context(&run, dir.as_deref());
    let mut prompt_paths = serde_json::Map::new();
    if let Some(d) = &dir {
        let (r, out) = (run.clone(), d.clone());
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&out)?;
            git_snapshot(&r, &out)
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| io_error("cannot write the git snapshot", e))?;
        for kind in [Kind::RunQuality, Kind::SpecCompliance, Kind::Summary] {
            let name = format!("{}-prompt.txt", kind.stem());
            let path = write_file(d, &name, prompt(kind, &ctx, &[])).await?;
            prompt_paths.insert(kind.key().into(), show(&path).into());
        }
    }
    let analysis = dir.as_deref().map(show);
    if p.prompt_only.unwrap_or(false) {
        return Ok(HttpResponse::Ok().json(json!({
            "status": "prompt_only",
            "analysis_dir": analysis,
            "prompts": prompt_paths,
        })));
    }
    if !run.status_in(&[RunStatus::Completed, RunStatus::Failed, RunStatus::Canceled]) {
        return Err(ApiError::conflict(
            "invalid_transition",
            format!(
                "run must have ended for a postmortem (status: {})",
                run.status
            ),
        ));
    }
    let st2 = st.clone();
    let job = tokio::spawn(async move { analyse(&st2, &run, &model, &ctx, dir).await });
    let (status, reports, steps) = job.await.map_err(ApiError::internal)??;
    Ok(HttpResponse::Ok().json(json!({
        "status": status,
        "analysis_dir": analysis,
        "prompts": prompt_paths,
        "reports": reports,
        "steps": steps,
    })))
}

/// The three analyses, one step after the other; (status, report paths, step ids).
async fn analyse(
    st: &AppState,
    run: &RunRow,
    model: &str,
    ctx: &Context,
    dir: Option<PathBuf>,
) -> Result<(&'static str, Value, Value), ApiError> {
    let mut reports = serde_json::Map::new();
    let mut steps = serde_json::Map::new();
    let mut texts = Vec::new();
    let mut all_ok = true;
    for kind in [Kind::SpecCompliance, Kind::RunQuality, Kind::Summary] {
        // The summary needs both reports (the existing daemon ran it only when both ran).
        if kind == Kind::Summary && texts.len() < 2 {
            reports.insert(kind.key().into(), Value::Null);
            all_ok = false;
            continue;
        }
        let quoted = if kind == Kind::Summary {
            texts.clone()
        } else {
            Vec::new()
        };
        let step = run_step(st, run, model, kind, prompt(kind, ctx, &quoted)).await?;
        steps.insert(kind.key().into(), step.id.clone().into());
        let ok = step.step_status() == Some(StepStatus::Succeeded);
        all_ok &= ok;
        let text = step_output(st, &step).await?;
        let path = match (&dir, &text) {
            (Some(d), Some(t)) => Some(show(
                &write_file(d, &format!("{}.md", kind.stem()), t.clone()).await?,
            )),
            _ => None,
        };
        reports.insert(kind.key().into(), path.into());
        if let Some(t) = text.filter(|_| step.step_status() != Some(StepStatus::Canceled)) {
            texts.push((kind, t));
        }
    }
    let status = if all_ok { "ok" } else { "failed" };
    Ok((status, Value::Object(reports), Value::Object(steps)))
}

/// Queues one postmortem step and waits until it has ended; the step as it ended.
async fn run_step(
    st: &AppState,
    run: &RunRow,
    model: &str,
    kind: Kind,
    prompt: String,
) -> Result<StepRow, ApiError> {
    let mut changes = st.hub.subscribe(&run.id);
    let (run_id, model) = (run.id.clone(), model.to_string());
    let prompt_path = format!("analysis/{}-prompt.txt", kind.stem());
    let first = kind == Kind::SpecCompliance;
    let step = st
        .db
        .tx(move |c| {
            let run = db::runs::lock(c, &run_id)?;
            // One postmortem of a run at a time (the run's lock orders the checks).
            let busy = db::steps::for_run(c, &run_id)?.iter().any(|s| {
                s.phase == StepPhase::Postmortem.as_str()
                    && !s.step_status().is_some_and(StepStatus::is_terminal)
            });
            if first && busy {
                return Ok(None);
            }
            let now = now_ms();
            let seq = db::steps::last(c, &run_id)?.map(|s| s.seq + 1).unwrap_or(1);
            let phase = StepPhase::Postmortem.as_str();
            let mut step = StepRow {
                attempt: db::steps::next_attempt(c, &run_id, phase)?,
                prompt: Some(prompt),
                prompt_path: Some(prompt_path),
                required_labels: run.labels.clone(),
                // The pipeline never decides from a postmortem step (a retried run starts
                // afresh after it).
                settled: true,
                ..StepRow::new(&run_id, seq, phase, StepStatus::Queued.as_str(), now)
            };
            step.set_postmortem_model(&model);
            db::steps::insert(c, &step)?;
            let payload = ev::step_queued(&step.id, phase, step.attempt);
            db::events::append(
                c,
                Some(&run_id),
                Some(&step.id),
                ev::STEP_QUEUED,
                &payload,
                now,
            )?;
            Ok::<_, DbError>(Some(step))
        })
        .await?
        .ok_or_else(|| {
            ApiError::conflict(
                "postmortem_running",
                "a postmortem of this run is running; wait for its answer",
            )
        })?;
    tracing::info!(run_id = %run.id, step_id = %step.id, analysis = kind.stem(), "postmortem step queued");
    st.hub.notify(&run.id);
    st.lease.do_send(QueueChanged {
        required_labels: step.required_labels.clone(),
        preferred_worker: None,
        broadcast: false,
    });
    loop {
        let sid = step.id.clone();
        let now = st.db.run(move |c| db::steps::get(c, &sid)).await?;
        match now {
            Some(s) if s.step_status().is_some_and(StepStatus::is_terminal) => return Ok(s),
            Some(_) => {}
            None => return Err(ApiError::internal("the postmortem step disappeared")),
        }
        // Woken by the run's changes; the timeout only guards against a missed one.
        let _ = tokio::time::timeout(Duration::from_secs(1), changes.changed()).await;
    }
}

/// The text the step's agent printed: its log artifact.
async fn step_output(st: &AppState, step: &StepRow) -> Result<Option<String>, ApiError> {
    let name = format!(
        "iter-{:02}-{}.log",
        step.attempt,
        StepPhase::Postmortem.slug()
    );
    let (run_id, n) = (step.run_id.clone(), name.clone());
    let row = st
        .db
        .run(move |c| db::artifacts::get(c, &run_id, &n))
        .await?;
    let Some(row) = row else { return Ok(None) };
    match st.store.get(&row.object_key).await {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).to_string())),
        Err(e) => {
            tracing::warn!(run_id = %step.run_id, artifact = %name, error = %e, "postmortem output unreadable");
            Ok(None)
        }
    }
}

/// `GET /runs/{id}/postmortem`: the analysis directory and which of its files exist.
pub async fn get(st: web::Data<AppState>, id: Id) -> Result<HttpResponse, ApiError> {
    let run = load_run(&st, &id.0).await?;
    let dir = analysis_dir(&run);
    let artifacts: Vec<Value> = ANALYSIS_FILES
        .iter()
        .map(|name| match &dir {
            Some(d) => {
                let p = d.join(name);
                json!({"path": show(&p), "exists": p.is_file()})
            }
            None => json!({"path": name, "exists": false}),
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "analysis_dir": dir.as_deref().map(show),
        "artifacts": artifacts,
    })))
}
