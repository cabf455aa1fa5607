//! A completion, as both paths write it (the transactional one in `lease_writes.rs`, and the
//! Postgres one in `complete_pg.rs`): the finished step's row and event, and what it tells the
//! run's state; and the snapshots claims keep for their completions. Part of the LeaseActor.

use super::lease_service::LeaseError;
use super::scheduler_service::SchedError;
use crate::api::CompleteRequest;
use crate::db::events::NewEvent;
use crate::db::fast;
use crate::db::models::{RunStateRow, StepRow};
use crate::domain::events as ev;
use crate::domain::{StepOutcome, StepPhase};
use std::collections::HashMap;

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
    run_status: &str,
    req: &CompleteRequest,
    digest: &str,
    now: i64,
) -> NewEvent {
    let ok = req.status == StepOutcome::Succeeded;
    step.status = if run_status == "CANCELED" {
        "CANCELED"
    } else if ok {
        "SUCCEEDED"
    } else {
        "FAILED"
    }
    .to_string();
    step.ended_at = Some(now);
    step.exit_code = req.exit_code;
    step.output_tail = Some(storable(&tail(&req.output_tail, TAIL_CAP)));
    step.completion_detected = req.completion_detected;
    step.failure_reason = match (&req.failure_reason, req.infra_failure) {
        (Some(r), true) => Some(format!("{}{}", super::INFRA_PREFIX, storable(r))),
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

/// Postgres: what each step's completion will likely decide from, as its claim read it, taken
/// by the completion. Bounded by entries and by bytes (a verification's snapshot carries the
/// watchdog's implementation steps with their output tails): a snapshot that does not fit is
/// not kept, and its completion reads a fresh one.
#[derive(Debug)]
pub struct Kept<T> {
    map: HashMap<String, (T, usize)>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl<T> Kept<T> {
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Kept {
            map: HashMap::new(),
            bytes: 0,
            max_entries,
            max_bytes,
        }
    }

    /// Keeps `value` (about `size` bytes) for `id`, replacing what `id` had. When it does not
    /// fit, everything kept is dropped first: the entries of steps whose completion never came
    /// (a lost lease, a cancelled run) would otherwise fill the room for good.
    pub fn keep(&mut self, id: &str, value: T, size: usize) {
        self.take(id);
        if self.map.len() >= self.max_entries || self.bytes + size > self.max_bytes {
            self.map.clear();
            self.bytes = 0;
        }
        if size <= self.max_bytes {
            self.bytes += size;
            self.map.insert(id.to_string(), (value, size));
        }
    }

    pub fn take(&mut self, id: &str) -> Option<T> {
        let (value, size) = self.map.remove(id)?;
        self.bytes -= size;
        Some(value)
    }
}

/// About how many bytes a snapshot holds.
pub fn snapshot_size(s: &fast::Snapshot) -> usize {
    let len = |t: &Option<String>| t.as_ref().map_or(0, String::len);
    let steps: usize = (s.inputs.recent_impls.iter())
        .chain(&s.inputs.succeeded_impls)
        .map(|r| 128 + len(&r.output_tail) + len(&r.prompt))
        .sum();
    4096 + len(&s.step.output_tail) + len(&s.step.prompt) + steps
}

/// A decision's failure as the worker's answer: an unavailable database is a 503, not a 500.
pub fn sched_err(e: SchedError) -> LeaseError {
    match e {
        SchedError::Db(d) => LeaseError::Db(d),
        other => LeaseError::Internal(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::Kept;

    #[test]
    fn kept_snapshots_stay_within_their_entries_and_bytes() {
        let mut k = Kept::new(2, 100);
        k.keep("a", 1, 60);
        k.keep("a", 2, 50);
        assert_eq!(k.bytes, 50, "replaced, and its old size given back");
        k.keep("b", 3, 40);
        assert_eq!(k.take("a"), Some(2));
        assert_eq!(k.take("a"), None, "taken once");
        k.keep("c", 4, 70);
        assert_eq!(k.take("b"), None, "no room: what was kept is dropped");
        assert_eq!(k.take("c"), Some(4));
        k.keep("d", 5, 1);
        k.keep("e", 6, 1);
        k.keep("f", 7, 1);
        assert_eq!(
            (k.take("d"), k.take("e")),
            (None, None),
            "over the entry cap"
        );
        assert_eq!(k.take("f"), Some(7));
        k.keep("g", 8, 101);
        assert_eq!(
            k.take("g"),
            None,
            "larger than the whole budget: never kept"
        );
        assert_eq!(k.bytes, 0);
    }
}
