//! What the SchedulerActor does: accepts runs, starts them within the concurrency caps, and
//! advances a run when its step finishes (settle the step, decide, queue the next step or
//! finish the run) — each decision in one transaction that locks the run. Finishing (merge,
//! final artifacts, cleanup) lives in `finish.rs`; control verbs in `control.rs`.

use super::assignment::run_config;
use super::events::EventHub;
use super::lease::QueueChanged;
use super::prompts;
use super::submit;
use crate::api::CreateRunRequest;
use crate::artifacts::ArtifactStore;
use crate::db::events::NewEvent;
use crate::db::models::{new_id, RunRow, RunStateRow, StepRow};
use crate::db::{self, Conn, Db, DbError};
use crate::domain::events as ev;
use crate::domain::pipeline::{self, Counters, Decision, Finished, Next};
use crate::domain::time::now_ms;
use crate::domain::{StepPhase, StepStatus};
use crate::settings::SchedulerSettings;
use crate::workspace::mirror::Mirrors;
use actix::Recipient;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

pub use crate::domain::pipeline::INFRA_PREFIX;

/// Why a scheduler operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum SchedError {
    #[error("run not found")]
    NotFound,
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    InvalidTransition(String),
    #[error("{0}")]
    NoCapacity(String),
    #[error(transparent)]
    Db(DbError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<DbError> for SchedError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::NotFound => SchedError::NotFound,
            other => SchedError::Db(other),
        }
    }
}

/// The scheduler's logic and what it needs.
pub struct SchedulerService {
    pub db: Db,
    pub hub: EventHub,
    pub store: ArtifactStore,
    pub mirrors: Arc<Mirrors>,
    pub settings: SchedulerSettings,
    pub queue: Recipient<QueueChanged>,
    /// Serialises starting runs, so the concurrency caps hold.
    pub(super) start_lock: tokio::sync::Mutex<()>,
    /// Runs being finished by this process right now.
    pub(super) finishing: Mutex<HashSet<String>>,
}

/// What an advance decided, to act on after the commit.
pub(super) enum Advanced {
    Nothing,
    Queued {
        labels: String,
        preferred: Option<String>,
    },
    Finish,
    Rewrite {
        name: String,
        prompt: String,
    },
}

impl SchedulerService {
    pub fn new(
        db: Db,
        hub: EventHub,
        store: ArtifactStore,
        mirrors: Arc<Mirrors>,
        settings: SchedulerSettings,
        queue: Recipient<QueueChanged>,
    ) -> Self {
        SchedulerService {
            db,
            hub,
            store,
            mirrors,
            settings,
            queue,
            start_lock: tokio::sync::Mutex::new(()),
            finishing: Mutex::new(HashSet::new()),
        }
    }

    /// Validates and stores a new run (PENDING), emitting RUN_CREATED.
    pub async fn create_run(&self, req: CreateRunRequest) -> Result<RunRow, SchedError> {
        let mirrors = self.mirrors.clone();
        let kind = self.store.kind();
        let row =
            tokio::task::spawn_blocking(move || submit::prepare(&req, &mirrors, kind, now_ms()))
                .await
                .map_err(|e| SchedError::Internal(e.to_string()))?
                .map_err(|e| SchedError::Invalid(e.0))?;
        let r = row.clone();
        self.db
            .tx(move |c| {
                db::runs::insert_with_state(c, &r)?;
                let payload = ev::run_created(
                    &r.id,
                    &r.name,
                    &r.name_source,
                    &r.spec_path,
                    r.plan_path.as_deref(),
                );
                db::events::append(
                    c,
                    Some(&r.id),
                    None,
                    ev::RUN_CREATED,
                    &payload,
                    r.created_at,
                )?;
                Ok::<_, SchedError>(())
            })
            .await?;
        tracing::info!(run_id = %row.id, name = %row.name, "run created");
        self.hub.notify(&row.id);
        Ok(row)
    }

    /// Advances a run whose step finished (or that has no step yet). Idempotent.
    pub async fn advance(self: &Arc<Self>, run_id: &str) -> Result<(), SchedError> {
        let (id, mirrors) = (run_id.to_string(), self.mirrors.clone());
        let outcome = self.db.tx(move |c| advance_in_tx(c, &id, &mirrors)).await?;
        self.hub.notify(run_id);
        for a in outcome {
            match a {
                Advanced::Nothing => {}
                Advanced::Queued { labels, preferred } => self.queue.do_send(QueueChanged {
                    required_labels: labels,
                    preferred_worker: preferred,
                    broadcast: false,
                }),
                Advanced::Finish => {
                    let me = self.clone();
                    let id = run_id.to_string();
                    actix::spawn(async move { me.finish(&id).await });
                }
                Advanced::Rewrite { name, prompt } => {
                    self.store_artifact(run_id, None, &name, prompt.into_bytes())
                        .await;
                }
            }
        }
        Ok(())
    }
}

/// Settles the run's last finished step and acts on the decision, in the caller's transaction.
fn advance_in_tx(
    c: &mut Conn,
    run_id: &str,
    mirrors: &Mirrors,
) -> Result<Vec<Advanced>, SchedError> {
    let run = db::runs::lock(c, run_id)?;
    if run.status != "RUNNING" && run.status != "PAUSED" {
        return Ok(vec![Advanced::Nothing]);
    }
    let mut state = db::runs::state(c, run_id)?;
    if state.finishing.is_some() {
        return Ok(vec![Advanced::Finish]);
    }
    let steps = db::steps::for_run(c, run_id)?;
    let active = |s: &StepRow| {
        !s.status
            .parse::<StepStatus>()
            .is_ok_and(|st| st.is_terminal())
    };
    if steps.iter().any(active) {
        return Ok(vec![Advanced::Nothing]);
    }
    let config = run_config(&run);
    let counters = Counters {
        iterations_done: state.iterations_done.max(0) as u32,
        verify_failures: state.verify_failures.max(0) as u32,
        review_failures: state.review_failures.max(0) as u32,
        watchdog_rewrites: state.watchdog_rewrites.max(0) as u32,
    };
    let now = now_ms();
    let mut actions = Vec::new();
    let decision = match steps.last() {
        Some(last) if !last.settled => {
            let d = pipeline::after_step(&finished(last, &steps), &counters, &config);
            let mut settled = last.clone();
            settled.settled = true;
            db::steps::save(c, &settled)?;
            d
        }
        _ => pipeline::first_step(&counters, &config),
    };
    let Decision {
        next,
        counters,
        effects,
    } = decision;
    state.iterations_done = counters.iterations_done as i32;
    state.verify_failures = counters.verify_failures as i32;
    state.review_failures = counters.review_failures as i32;
    state.watchdog_rewrites = counters.watchdog_rewrites as i32;
    if let Some(notes) = effects.runner_notes {
        state.runner_notes = Some(notes).filter(|n| !n.is_empty());
    }
    if let Some(rw) = effects.rewrite {
        let name = format!("prompt.rewrite.{}.txt", state.watchdog_rewrites);
        let step_id = steps.last().map(|s| s.id.clone());
        state.pending_prompt = Some(rw.prompt.clone());
        let payload = ev::watchdog_rewrite(
            step_id.as_deref().unwrap_or(""),
            &rw.signal,
            "prompt.txt",
            &name,
        );
        db::events::append(
            c,
            Some(run_id),
            step_id.as_deref(),
            ev::WATCHDOG_REWRITE,
            &payload,
            now,
        )?;
        actions.push(Advanced::Rewrite {
            name,
            prompt: rw.prompt,
        });
    }
    match next {
        Next::Enqueue { phase, is_final } => {
            let step = enqueue(c, &run, &mut state, phase, is_final, mirrors, &steps, now)?;
            actions.push(Advanced::Queued {
                labels: step.required_labels,
                preferred: step.preferred_worker_id,
            });
        }
        Next::Finish(outcome) => {
            state.finishing =
                Some(serde_json::to_string(&FinishPlan::from(outcome)).unwrap_or_default());
            actions.push(Advanced::Finish);
        }
    }
    db::runs::save_state(c, &state)?;
    Ok(actions)
}

/// What the pipeline needs to know about a finished step and its predecessors.
fn finished<'a>(last: &'a StepRow, steps: &'a [StepRow]) -> Finished<'a> {
    let impls: Vec<&StepRow> = steps
        .iter()
        .filter(|s| s.phase == "implementation" && s.status == "SUCCEEDED")
        .collect();
    let reason = last.failure_reason.as_deref();
    Finished {
        phase: last.phase.parse().ok(),
        succeeded: last.status == "SUCCEEDED",
        is_final: last.is_final,
        completion_detected: last.completion_detected.unwrap_or(false),
        failure_reason: reason.map(|r| r.strip_prefix(INFRA_PREFIX).unwrap_or(r)),
        infra_failure: reason.is_some_and(|r| r.starts_with(INFRA_PREFIX)),
        runner_notes: last.runner_notes.as_deref(),
        last_impl_output: impls.last().and_then(|s| s.output_tail.as_deref()),
        previous_impl_output: impls
            .len()
            .checked_sub(2)
            .and_then(|i| impls[i].output_tail.as_deref()),
        last_impl_prompt: steps
            .iter()
            .rev()
            .find(|s| s.phase == "implementation")
            .and_then(|s| s.prompt.as_deref()),
    }
}

/// Queues a step of `phase` (with its prompt) and emits STEP_QUEUED.
#[allow(clippy::too_many_arguments)]
fn enqueue(
    c: &mut Conn,
    run: &RunRow,
    state: &mut RunStateRow,
    phase: StepPhase,
    is_final: bool,
    mirrors: &Mirrors,
    steps: &[StepRow],
    now: i64,
) -> Result<StepRow, SchedError> {
    let attempt = db::steps::next_attempt(c, &run.id, phase.as_str())?;
    let prompt = if phase == StepPhase::Implementation {
        state
            .pending_prompt
            .take()
            .or_else(|| prompts::build(run, mirrors, phase))
    } else {
        prompts::build(run, mirrors, phase)
    };
    let prompt_path = match phase {
        StepPhase::Implementation => Some("prompt.txt".to_string()),
        StepPhase::Review => Some("review-prompt.txt".to_string()),
        _ => None,
    };
    let step = StepRow {
        id: new_id(),
        run_id: run.id.clone(),
        seq: steps.last().map(|s| s.seq + 1).unwrap_or(1),
        phase: phase.as_str().into(),
        status: StepStatus::Queued.as_str().into(),
        attempt,
        infra_attempts: 0,
        is_final,
        settled: false,
        queued_at: now,
        started_at: None,
        ended_at: None,
        exit_code: None,
        prompt,
        prompt_path,
        output_path: None,
        output_tail: None,
        runner_notes: None,
        output_size: 0,
        completion_detected: None,
        worker_id: None,
        lease_epoch: 0,
        required_labels: run.labels.clone(),
        preferred_worker_id: state.last_worker_id.clone(),
        failure_reason: None,
        completion_digest: None,
    };
    db::steps::insert(c, &step)?;
    let payload = ev::step_queued(&step.id, phase.as_str(), attempt);
    db::events::append_many(
        c,
        &run.id,
        &[NewEvent {
            step_id: Some(&step.id),
            event_type: ev::STEP_QUEUED,
            payload,
        }],
        now,
    )?;
    Ok(step)
}

/// A terminal decision being carried out, stored in `run_state.finishing`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FinishPlan {
    pub completed: bool,
    pub reason: Option<String>,
}

impl From<pipeline::Outcome> for FinishPlan {
    fn from(o: pipeline::Outcome) -> Self {
        match o {
            pipeline::Outcome::Completed => FinishPlan {
                completed: true,
                reason: None,
            },
            pipeline::Outcome::Failed { reason } => FinishPlan {
                completed: false,
                reason: Some(reason),
            },
        }
    }
}
