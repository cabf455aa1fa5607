//! What follows a finished step — the SchedulerActor's decision, taken inside the
//! transaction that settles the step (the completion's own, by the lease owner, or an
//! advance's, by the scheduler): the pipeline's verdict, the next step queued with its prompt,
//! or the run marked for finishing. It fails only when the database does.

use super::outcome::{Advanced, FinishPlan};
use super::prompts;
use crate::db::events::NewEvent;
use crate::db::models::{ImplStep, RunRow, RunStateRow, StepRow};
use crate::db::{self, Conn, DbError};
use crate::domain::api_limit::account;
use crate::domain::events as ev;
use crate::domain::pipeline::{self, Counters, Decision, Finished, Next, Outcome, INFRA_PREFIX};
use crate::domain::run_config::RunConfig;
use crate::domain::usage::{budget_exceeded, day_start, RunUsage, DAY_MS};
use crate::domain::{RunStatus, StepPhase, StepStatus};
use crate::workspace::mirror::Mirrors;

/// Whether a step's completion can be followed up in its own transaction: the run (locked by
/// the caller) is going on, not being finished, and has no other step in flight.
pub fn decides_now(
    c: &mut Conn,
    run: &RunRow,
    state: &RunStateRow,
    step_id: &str,
) -> Result<bool, DbError> {
    Ok(decides(
        run,
        state,
        db::steps::any_active(c, &run.id, Some(step_id))?,
    ))
}

/// [`decides_now`], given whether another step of the run is in flight.
pub fn decides(run: &RunRow, state: &RunStateRow, others_active: bool) -> bool {
    run.status_in(&[RunStatus::Running, RunStatus::Paused])
        && state.finishing.is_none()
        && !others_active
}

/// What a decision reads of a run's steps besides the finished one: the database in a
/// transaction, or a snapshot read in one statement (`db::fast`).
pub trait History {
    /// The run's newest implementation steps, newest first, at most `limit` (≤ 3).
    fn recent_implementations(
        &mut self,
        run_id: &str,
        limit: i64,
    ) -> Result<Vec<ImplStep>, DbError>;
    /// The run's two newest succeeded implementation steps, newest first (their prompts may
    /// be left out).
    fn succeeded_implementations(&mut self, run_id: &str) -> Result<Vec<ImplStep>, DbError>;
    /// The attempt number a new step of `phase` gets.
    fn next_attempt(&mut self, run_id: &str, phase: &str) -> Result<i32, DbError>;
    /// What the run's agent steps spent so far (the finished one included).
    fn usage(&mut self, run_id: &str) -> Result<RunUsage, DbError>;
}

impl History for Conn {
    fn recent_implementations(
        &mut self,
        run_id: &str,
        limit: i64,
    ) -> Result<Vec<ImplStep>, DbError> {
        db::steps::recent_implementations(self, run_id, limit)
    }
    fn succeeded_implementations(&mut self, run_id: &str) -> Result<Vec<ImplStep>, DbError> {
        db::steps::succeeded_implementations(self, run_id)
    }
    fn next_attempt(&mut self, run_id: &str, phase: &str) -> Result<i32, DbError> {
        db::steps::next_attempt(self, run_id, phase)
    }
    fn usage(&mut self, run_id: &str) -> Result<RunUsage, DbError> {
        Ok(db::usage::run_total(self, run_id)?.unwrap_or_default())
    }
}

impl History for db::fast::Snapshot {
    fn recent_implementations(&mut self, _: &str, limit: i64) -> Result<Vec<ImplStep>, DbError> {
        let mut v = self.inputs.recent_impls.clone();
        v.truncate(limit.max(0) as usize);
        Ok(v)
    }
    fn succeeded_implementations(&mut self, _: &str) -> Result<Vec<ImplStep>, DbError> {
        Ok(self.inputs.succeeded_impls.clone())
    }
    fn next_attempt(&mut self, _: &str, phase: &str) -> Result<i32, DbError> {
        Ok(self.inputs.attempts.get(phase).copied().unwrap_or(0) + 1)
    }
    /// Nothing: the snapshot path only takes completions that report no usage, and the one
    /// that took the run over its budget (which did report) failed the run already.
    fn usage(&mut self, _: &str) -> Result<RunUsage, DbError> {
        Ok(RunUsage::default())
    }
}

/// A decision's writes: the finished step settled, the step queued, the state, the events
/// (the caller's, then the decision's), and what the SchedulerActor carries out afterwards.
pub struct Plan {
    pub settled: Option<StepRow>,
    pub queued: Option<StepRow>,
    pub state: RunStateRow,
    pub events: Vec<NewEvent>,
    pub actions: Vec<Advanced>,
}

/// Decides what follows `last` — the run's newest step, finished (and written back here,
/// settled, in the same statement) — or starts the run when it has none; queues the next step
/// or marks the run for finishing, and writes the state with `events` (the caller's, then
/// this decision's). Runs in the caller's transaction, which holds the run's lock.
pub fn decide_in_tx(
    c: &mut Conn,
    run: &RunRow,
    state: RunStateRow,
    last: Option<StepRow>,
    events: Vec<NewEvent>,
    mirrors: &Mirrors,
    now: i64,
) -> Result<Vec<Advanced>, DbError> {
    let p = plan(c, run, state, last, events, mirrors, now)?;
    if let Some(s) = &p.settled {
        db::steps::save(c, s)?;
    }
    if let Some(s) = &p.queued {
        if let Some(a) = &s.account {
            // Its account's limit holds from its first step on.
            db::accounts::ensure_known(c, a)?;
        }
        db::steps::insert(c, s)?;
        // A workspace past its daily budget: the new step waits for the next UTC day.
        if let Some(until) = daily_hold(c, run, now)? {
            db::steps::hold_until(c, std::slice::from_ref(&s.run_id), until)?;
        }
    }
    let seq = db::runs::save_state_with_events(c, &p.state, p.events.len())?;
    db::events::insert_numbered(c, &run.id, seq, &p.events, now)?;
    Ok(p.actions)
}

/// When the run's workspace has reached its daily budget (`[budgets]`), the end of the UTC
/// day, until which its new steps wait.
pub fn daily_hold(c: &mut Conn, run: &RunRow, now: i64) -> Result<Option<i64>, DbError> {
    let Some(budgets) = crate::settings::installed_budgets() else {
        return Ok(None);
    };
    let budget = budgets.for_workspace(&run.workspace_root);
    if !budget.limits() {
        return Ok(None);
    }
    let day = day_start(now);
    let spent = db::usage::workspace_since(c, &run.workspace_root, day)?;
    Ok(budget.reached(&spent).map(|_| day + DAY_MS))
}

/// [`decide_in_tx`]'s decision without its writes; `h` answers what it reads.
pub fn plan(
    h: &mut impl History,
    run: &RunRow,
    mut state: RunStateRow,
    last: Option<StepRow>,
    mut events: Vec<NewEvent>,
    mirrors: &Mirrors,
    now: i64,
) -> Result<Plan, DbError> {
    let config = run.config();
    let counters = Counters {
        iterations_done: state.iterations_done.max(0) as u32,
        verify_failures: state.verify_failures.max(0) as u32,
        review_failures: state.review_failures.max(0) as u32,
        watchdog_rewrites: state.watchdog_rewrites.max(0) as u32,
    };
    let mut actions = Vec::new();
    let mut settled = None;
    let decision = match &last {
        Some(l) if !l.settled => {
            let impls = implementations_before(h, l)?;
            let d = pipeline::after_step(&finished(l, &impls), &counters, &config);
            let mut s = l.clone();
            s.settled = true;
            settled = Some(s);
            d
        }
        _ => pipeline::first_step(&counters, &config),
    };
    let Decision {
        mut next,
        counters,
        effects,
    } = decision;
    // A step that took the run over its budget is followed by none.
    let budgeted = config.max_cost_usd.is_some() || config.max_tokens.is_some();
    if budgeted && matches!(next, Next::Enqueue { .. }) && last.is_some() {
        let spent = h.usage(&run.id)?;
        if let Some(reason) = budget_exceeded(&spent, config.max_cost_usd, config.max_tokens) {
            next = Next::Finish(Outcome::Failed { reason });
        }
    }
    state.iterations_done = counters.iterations_done as i32;
    state.verify_failures = counters.verify_failures as i32;
    state.review_failures = counters.review_failures as i32;
    state.watchdog_rewrites = counters.watchdog_rewrites as i32;
    if let Some(notes) = effects.runner_notes {
        state.runner_notes = Some(notes).filter(|n| !n.is_empty());
    }
    if let Some(rw) = effects.rewrite {
        let name = format!("prompt.rewrite.{}.txt", state.watchdog_rewrites);
        let step_id = last.as_ref().map(|s| s.id.clone());
        state.pending_prompt = Some(rw.prompt.clone());
        events.push(NewEvent {
            payload: ev::watchdog_rewrite(
                step_id.as_deref().unwrap_or(""),
                &rw.signal,
                "prompt.txt",
                &name,
            ),
            step_id,
            event_type: ev::WATCHDOG_REWRITE,
        });
        actions.push(Advanced::Rewrite {
            name,
            prompt: rw.prompt,
        });
    }
    let mut queued = None;
    match next {
        Next::Enqueue { phase, is_final } => {
            let seq = last.as_ref().map(|s| s.seq + 1).unwrap_or(1);
            let step = enqueue(
                h, run, &config, &mut state, phase, is_final, mirrors, seq, now,
            )?;
            events.push(NewEvent {
                step_id: Some(step.id.clone()),
                event_type: ev::STEP_QUEUED,
                payload: ev::step_queued(&step.id, phase.as_str(), step.attempt),
            });
            actions.push(Advanced::Queued {
                labels: step.required_labels.clone(),
                preferred: step.preferred_worker_id.clone(),
            });
            queued = Some(step);
        }
        Next::Finish(outcome) => {
            state.finishing =
                Some(serde_json::to_string(&FinishPlan::from(outcome)).unwrap_or_default());
            actions.push(Advanced::Finish);
        }
    }
    Ok(Plan {
        settled,
        queued,
        state,
        events,
        actions,
    })
}

/// The implementation steps the watchdog compares, newest first (the newest always, with its
/// prompt): read only after a verification that may lead to another implementation (the only
/// decision that uses them).
fn implementations_before(h: &mut impl History, last: &StepRow) -> Result<Vec<ImplStep>, DbError> {
    if last.phase != StepPhase::Verification.as_str() || last.is_final {
        return Ok(Vec::new());
    }
    // Usually the two newest succeeded; when failures sit between, ask for those directly.
    let mut recent = h.recent_implementations(&last.run_id, 3)?;
    let succeeded = recent
        .iter()
        .filter(|s| s.step_status() == Some(StepStatus::Succeeded))
        .count();
    if succeeded < 2 && recent.len() == 3 {
        let newest = recent.remove(0);
        recent = h.succeeded_implementations(&last.run_id)?;
        // The newest as the first list read it: the second may leave prompts out.
        match recent.first_mut() {
            Some(s) if s.id == newest.id => *s = newest,
            _ => recent.insert(0, newest),
        }
    }
    Ok(recent)
}

/// What the pipeline needs to know about a finished step; `impls` are the run's newest
/// implementation steps, newest first (see [`implementations_before`]).
fn finished<'a>(last: &'a StepRow, impls: &'a [ImplStep]) -> Finished<'a> {
    let mut succeeded = impls
        .iter()
        .filter(|s| s.step_status() == Some(StepStatus::Succeeded));
    let reason = last.failure_reason.as_deref();
    Finished {
        phase: last.phase.parse().ok(),
        succeeded: last.step_status() == Some(StepStatus::Succeeded),
        is_final: last.is_final,
        completion_detected: last.completion_detected.unwrap_or(false),
        failure_reason: reason.map(|r| r.strip_prefix(INFRA_PREFIX).unwrap_or(r)),
        infra_failure: reason.is_some_and(|r| r.starts_with(INFRA_PREFIX)),
        runner_notes: last.runner_notes.as_deref(),
        last_impl_output: succeeded.next().and_then(|s| s.output_tail.as_deref()),
        previous_impl_output: succeeded.next().and_then(|s| s.output_tail.as_deref()),
        last_impl_prompt: impls.first().and_then(|s| s.prompt.as_deref()),
    }
}

/// The step of `phase` to queue (with its prompt); the caller inserts it and records
/// STEP_QUEUED.
#[allow(clippy::too_many_arguments)]
fn enqueue(
    h: &mut impl History,
    run: &RunRow,
    config: &RunConfig,
    state: &mut RunStateRow,
    phase: StepPhase,
    is_final: bool,
    mirrors: &Mirrors,
    seq: i32,
    now: i64,
) -> Result<StepRow, DbError> {
    let attempt = h.next_attempt(&run.id, phase.as_str())?;
    let prompt = if phase == StepPhase::Implementation {
        state
            .pending_prompt
            .take()
            .or_else(|| prompts::build(run, config, mirrors, phase))
    } else {
        prompts::build(run, config, mirrors, phase)
    };
    let prompt_path = match phase {
        StepPhase::Implementation => Some("prompt.txt".to_string()),
        StepPhase::Review => Some("review-prompt.txt".to_string()),
        _ => None,
    };
    let step = StepRow {
        attempt,
        is_final,
        account: step_account(config, phase),
        prompt,
        prompt_path,
        required_labels: run.labels.clone(),
        preferred_worker_id: state.last_worker_id.clone(),
        ..StepRow::new(
            &run.id,
            seq,
            phase.as_str(),
            StepStatus::Queued.as_str(),
            now,
        )
    };
    Ok(step)
}

/// The agent account a step of `phase` counts against: implementation and review steps run the
/// agent (review steps with `review_model`); none while `[api_limits]` is off.
pub fn step_account(config: &RunConfig, phase: StepPhase) -> Option<String> {
    if !account::enabled() {
        return None;
    }
    let model = match phase {
        StepPhase::Review => config.effective_review_model(),
        p if p.runs_agent() => config.model.as_str(),
        _ => return None,
    };
    Some(account::account_key(model, &config.agent_cmd))
}

#[cfg(test)]
mod tests;
