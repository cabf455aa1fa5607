//! The answer of a completion that leased its worker the step it had just queued (the direct
//! path of `loopd_complete_and_claim`, `src/db/pg/loopd_complete_and_claim.sql`): the
//! database sends back only its clock (and the watchdog's lists after a verification is
//! queued), and the claimed step, its lease, run, state and the snapshot its own completion
//! will decide from are built here from what the completion wrote. They are what the database
//! holds: the step and state were written from these very values, the run is not written by a
//! completion and was checked unchanged (should one of these ever differ, the next completion's
//! write finds it moved and reads a fresh snapshot), and the decision inputs follow from the
//! step being the run's only unfinished one. The storage suite compares the whole with a read.

use super::fast::{decode, Claimed, ClaimedStep, Completion, Inputs, Snapshot};
use super::leases::ClaimSpec;
use super::models::{ImplStep, LeaseRow, StepRow};
use super::DbError;
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
struct Direct {
    now: i64,
    /// The version of the run's state the completion wrote.
    state_version: i64,
    /// The watchdog's inputs (`loopd_watch_inputs`), present when the leased step is a
    /// verification that is not final.
    watch: Option<Watch>,
}

#[derive(Deserialize)]
struct Watch {
    recent_impls: Vec<ImplStep>,
    succeeded_impls: Vec<ImplStep>,
}

/// The claim a direct answer stands for, after the completion `w` decided from `snap`.
pub(super) fn claimed(
    reply: Value,
    snap: &Snapshot,
    w: &Completion<'_>,
    spec: &ClaimSpec<'_>,
) -> Result<Claimed, DbError> {
    let Direct {
        now,
        state_version,
        watch,
    } = decode(reply)?;
    let queued = w
        .queued
        .ok_or_else(|| DbError::Reply("a direct lease without a queued step".into()))?;
    let mut step = StepRow {
        status: "IN_PROGRESS".into(),
        worker_id: Some(spec.worker_id.to_string()),
        lease_epoch: queued.lease_epoch + 1,
        queued_at: now,
        started_at: Some(now),
        ..queued.clone()
    };
    let lease = LeaseRow::granted(&step, spec.worker_id, now, spec.ttl_ms);
    // LEASE_GRANTED and STEP_STARTED follow the completion's events.
    let mut state = w.state.clone();
    state.event_seq += 2;
    let inputs = after_queueing(&snap.inputs, &step, watch);
    // The snapshot keeps everything but the prompt (copied once, for the worker).
    let prompt = step.prompt.take();
    let next = Snapshot {
        now,
        step: step.clone(),
        lease: Some(lease.clone()),
        run: snap.run.clone(),
        state: state.clone(),
        inputs,
        run_version: snap.run_version,
        state_version,
    };
    step.prompt = prompt;
    Ok(Claimed::Got(Box::new(ClaimedStep {
        step,
        lease,
        run: snap.run.clone(),
        state,
        now,
        next: Some(next),
    })))
}

/// The decision inputs of `step`, just queued as the run's only unfinished step, from those
/// its predecessor was decided with: nothing else in flight (the write checked it), and its
/// phase's highest attempt counting it. The watchdog's lists, used only after a verification,
/// are what the database answered with.
fn after_queueing(before: &Inputs, step: &StepRow, watch: Option<Watch>) -> Inputs {
    let mut attempts = before.attempts.clone();
    let a = attempts.entry(step.phase.clone()).or_insert(step.attempt);
    *a = (*a).max(step.attempt);
    let (recent_impls, succeeded_impls) =
        watch.map_or_else(Default::default, |w| (w.recent_impls, w.succeeded_impls));
    Inputs {
        others_active: false,
        attempts,
        recent_impls,
        succeeded_impls,
    }
}
