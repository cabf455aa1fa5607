//! A completion, as both paths write it — the finished step's row and event, and what it
//! tells the run's state — and the transactional path itself ([`record_in_tx`]: SQLite
//! always, Postgres when its one-statement path in `complete_pg.rs` does not hold). Called by
//! the lease service and `complete_pg.rs`.

use super::authorize::authorize_held;
use super::error::LeaseError;
use super::writes::record_artifact;
use crate::actors::run_progress::decide::{decide_in_tx, decides_now};
use crate::actors::run_progress::outcome::FollowUp;
use crate::api::CompleteRequest;
use crate::db::events::NewEvent;
use crate::db::models::{RunStateRow, StepRow};
use crate::db::usage::UsageRow;
use crate::db::{self, Conn};
use crate::domain::events as ev;
use crate::domain::pipeline::INFRA_PREFIX;
use crate::domain::run_config::RunConfig;
use crate::domain::usage::StepUsage;
use crate::domain::{RunStatus, StepOutcome, StepPhase, StepStatus};
use crate::workspace::mirror::Mirrors;

/// Longest output tail kept with a step (the watchdog compares tails).
const TAIL_CAP: usize = 64 * 1024;

/// Text from a worker, made storable: NUL bytes (which databases refuse) become U+FFFD.
fn storable(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

/// Keeps the last `cap` bytes of `s`, cut at a character boundary.
fn tail(s: &str, cap: usize) -> String {
    if s.len() <= cap {
        return s.to_string();
    }
    let mut start = s.len() - cap;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_string()
}

/// Marks `step` finished as `req` says (cancelled if its run is) and returns its event.
pub fn completed(
    step: &mut StepRow,
    run_status: Option<RunStatus>,
    req: &CompleteRequest,
    digest: &str,
    now: i64,
) -> NewEvent {
    let ok = req.status == StepOutcome::Succeeded;
    step.set_status(if run_status == Some(RunStatus::Canceled) {
        StepStatus::Canceled
    } else if ok {
        StepStatus::Succeeded
    } else {
        StepStatus::Failed
    });
    step.ended_at = Some(now);
    step.exit_code = req.exit_code;
    step.output_tail = Some(storable(&tail(&req.output_tail, TAIL_CAP)));
    step.completion_detected = req.completion_detected;
    step.failure_reason = match (&req.failure_reason, req.infra_failure) {
        (Some(r), true) => Some(format!("{}{}", INFRA_PREFIX, storable(r))),
        (r, _) => r.as_deref().map(storable),
    };
    step.runner_notes = req.runner_notes.as_deref().map(storable);
    step.completion_digest = Some(digest.to_string());
    let phase: StepPhase = step.phase.parse().unwrap_or(StepPhase::Implementation);
    let log = format!("iter-{:02}-{}.log", step.attempt, phase.slug());
    step.output_path = Some(log.clone());
    let sid = Some(step.id.clone());
    if ok || phase == StepPhase::Verification {
        let code = req.exit_code.unwrap_or(if ok { 0 } else { 1 });
        NewEvent {
            payload: ev::step_finished(&step.id, code, req.duration_ms, &log),
            step_id: sid,
            event_type: ev::STEP_FINISHED,
        }
    } else {
        let reason = req.failure_reason.as_deref().unwrap_or("failed");
        NewEvent {
            payload: ev::step_failed(&step.id, req.exit_code, reason),
            step_id: sid,
            event_type: ev::STEP_FAILED,
        }
    }
}

/// What a completion tells the run's state: its checkpoint, and who ran the step.
pub fn note_in_state(state: &mut RunStateRow, req: &CompleteRequest, worker_id: &str) {
    if let Some(cp) = &req.checkpoint {
        state.checkpoint_name = Some(cp.name.clone());
        state.checkpoint_head = Some(cp.head.clone());
    }
    state.last_worker_id = Some(worker_id.to_string());
}

/// The usage a completion recorded, with its model.
pub type Spent = Option<(String, StepUsage)>;

/// The model a step of `phase` runs, as the run's config names it (usage is counted by it).
pub fn step_model(config: &RunConfig, phase: &str) -> String {
    match phase.parse() {
        Ok(StepPhase::Review) => config.effective_review_model().to_string(),
        _ => config.model.clone(),
    }
}

/// The transactional path of a completion: in the caller's transaction, checks the lease
/// (locking it until the commit), records the step, its artifacts and event, and — when the
/// run is going on — decides what follows. `None`: a repeat of a completion already recorded;
/// else the run for the scheduler, with the decision when it was taken here. The usage the
/// completion reported is recorded with it, and returned with its model.
pub fn record_in_tx(
    c: &mut Conn,
    wid: &str,
    sid: &str,
    req: &CompleteRequest,
    digest: &str,
    kind: &str,
    mirrors: &Mirrors,
) -> Result<(Option<FollowUp>, Spent), LeaseError> {
    let repeat = |c: &mut db::Conn| -> Result<bool, LeaseError> {
        let s = db::steps::get(c, sid)?.ok_or(LeaseError::NotFound)?;
        Ok(s.completion_digest.as_deref() == Some(digest)
            && s.lease_epoch == req.epoch
            && s.worker_id.as_deref() == Some(wid))
    };
    // Locks the lease until this completion commits; the step is read after it.
    let held = match authorize_held(c, sid, wid, req.epoch) {
        Ok(h) => h,
        // Already completed (perhaps while this one waited for the lock).
        Err(LeaseError::Stale) if repeat(c)? => return Ok((None, None)),
        Err(e) => return Err(e),
    };
    let (mut step, now) = (held.step, held.now_ms);
    let (run, mut state) = db::runs::lock_with_state(c, &step.run_id)?;
    let event = completed(&mut step, run.run_status(), req, digest, now);
    db::leases::delete(c, sid)?;
    for a in &req.artifacts {
        let known = db::artifacts::get(c, &run.id, &a.name)?;
        if known.is_none_or(|k| k.sha256 != a.sha256) {
            let key = crate::artifacts::attempt_key(&run.id, sid, req.epoch, &a.name)
                .map_err(|e| LeaseError::Invalid(e.to_string()))?;
            record_artifact(c, &run.id, sid, a, kind, &key, now)?;
        }
    }
    note_in_state(&mut state, req, wid);
    let mut spent = None;
    if let Some(u) = &req.usage {
        let model = step_model(&run.config(), &step.phase);
        db::usage::record(c, &UsageRow::new(sid, &run.id, &model, u, now))?;
        spent = Some((model, u.clone()));
    }
    tracing::info!(run_id = %run.id, step_id = %sid, worker_id = %wid, lease_epoch = req.epoch, status = %step.status, "step completed");
    // The scheduler's decision, in this transaction when the run is going on;
    // otherwise the step is recorded and the scheduler looks at the run afterwards.
    if decides_now(c, &run, &state, sid)? {
        let actions = decide_in_tx(c, &run, state, Some(step), vec![event], mirrors, now)
            .map_err(LeaseError::from_decision)?;
        let f = FollowUp {
            run_id: run.id,
            decided: Some(actions),
        };
        return Ok((Some(f), spent));
    }
    db::steps::save(c, &step)?;
    let seq = db::runs::save_state_with_events(c, &state, 1)?;
    db::events::insert_numbered(c, &run.id, seq, &[event], now)?;
    let f = FollowUp {
        run_id: run.id,
        decided: None,
    };
    Ok((Some(f), spent))
}

/// The complete-step request's fingerprint: a repeated identical completion is idempotent.
/// `claim_next` asks for something besides the completion and is not part of it.
pub fn completion_digest(req: &CompleteRequest) -> String {
    use sha2::{Digest, Sha256};
    let completion = CompleteRequest {
        claim_next: false,
        ..req.clone()
    };
    let bytes = serde_json::to_vec(&completion).unwrap_or_default();
    hex::encode(Sha256::digest(bytes))
}
