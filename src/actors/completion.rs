//! A completion, as both paths write it: the finished step's row and event, and what it
//! tells the run's state. And the Postgres path: read everything in one statement, decide in
//! Rust, write in one statement that first checks nothing moved — otherwise the transactional
//! path in `lease_writes.rs` (which SQLite always takes) does it. Part of the LeaseActor.

use super::decide::{self, decides};
use super::lease_service::{output_held, LeaseError, LeaseService};
use super::scheduler_service::{Advanced, SchedError};
use crate::api::CompleteRequest;
use crate::db::events::NewEvent;
use crate::db::fast::{self, Claimed, Completion};
use crate::db::leases::ClaimSpec;
use crate::db::models::{RunStateRow, StepRow};
use crate::db::{batch, ConnSource};
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

/// A completion the Postgres path wrote: its run, what was decided for it, and the claim made
/// in the same statement when one was asked for (with the output held for the claimed step).
pub(super) struct Written {
    pub run_id: String,
    pub actions: Vec<Advanced>,
    pub claimed: Option<(Claimed, u64)>,
}

impl LeaseService {
    /// A completion without artifacts on Postgres in one or two statements: `Some` when done,
    /// `None` when the transactional path must do it (the lease is not this worker's, the run
    /// is not going on or has another step in flight, or something moved between the read and
    /// the write). It decides from what the claim read when it can (one statement: the write,
    /// which checks that nothing moved), else from a fresh snapshot. With `next` (the worker's
    /// labels), the write's statement also claims the worker's next step.
    pub(super) async fn complete_pg(
        &self,
        worker_id: &str,
        step_id: &str,
        req: &CompleteRequest,
        digest: &str,
        next: Option<&[String]>,
    ) -> Result<Option<Written>, LeaseError> {
        let kept = self
            .claimed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(step_id);
        let (wid, sid, req, digest) = (
            worker_id.to_string(),
            step_id.to_string(),
            req.clone(),
            digest.to_string(),
        );
        let labels = next.map(<[String]>::to_vec);
        let (ttl, window) = self.claim_times();
        let (mirrors, output) = (self.mirrors.clone(), self.output.clone());
        let batcher = self.db.batcher();
        // The connection is taken only if needed: not while the completion waits for its batch.
        self.db
            .run_lazy(move |c| -> Result<_, LeaseError> {
                let w = Writer {
                    batcher: batcher.as_deref(),
                    worker_id: &wid,
                    req: &req,
                    digest: &digest,
                    mirrors: &mirrors,
                    next: labels.as_deref().map(|labels| ClaimSpec {
                        worker_id: &wid,
                        labels,
                        ttl_ms: ttl,
                        affinity_window_ms: window,
                    }),
                };
                let mut done = None;
                if let Some(snap) = kept {
                    done = w.write_from(c, snap)?;
                }
                if done.is_none() {
                    done = match fast::complete_snapshot(c.get()?, &sid)? {
                        Some(snap) => w.write_from(c, snap)?,
                        None => None,
                    };
                }
                // How much output the controller holds for the claimed step (a stat: here).
                Ok(done.map(|(run_id, actions, claimed)| Written {
                    run_id,
                    actions,
                    claimed: claimed.map(|got| {
                        let offset = output_held(&output, &got);
                        (got, offset)
                    }),
                }))
            })
            .await
    }
}

/// One completion, written from snapshots.
struct Writer<'a> {
    /// Where completions wait to be written together (Postgres).
    batcher: Option<&'a crate::db::batch::Batcher>,
    worker_id: &'a str,
    req: &'a CompleteRequest,
    digest: &'a str,
    mirrors: &'a crate::workspace::mirror::Mirrors,
    /// The worker's next claim, made by the write's statement.
    next: Option<ClaimSpec<'a>>,
}

/// What [`Writer::write_from`] wrote: the run, what was decided, the claim made with it.
type Wrote = (String, Vec<Advanced>, Option<Claimed>);

impl Writer<'_> {
    /// Decides from `snap` and writes if it still holds; `None` when it does not apply.
    fn write_from(
        &self,
        c: &mut impl ConnSource,
        mut snap: fast::Snapshot,
    ) -> Result<Option<Wrote>, LeaseError> {
        let (wid, req) = (self.worker_id, self.req);
        // (The write checks the lease's expiry against the database clock.)
        let held = snap
            .lease
            .as_ref()
            .is_some_and(|l| l.worker_id == wid && l.epoch == req.epoch);
        if !held || !decides(&snap.run, &snap.state, snap.inputs.others_active) {
            return Ok(None);
        }
        let now = snap.now;
        let (run, mut state, mut step) = (snap.run.clone(), snap.state.clone(), snap.step.clone());
        let event = completed(&mut step, &run.status, req, self.digest, now);
        note_in_state(&mut state, req, wid);
        let mut plan = decide::plan(
            &mut snap,
            &run,
            state,
            Some(step),
            vec![event],
            self.mirrors,
            now,
        )
        .map_err(sched_err)?;
        plan.state.event_seq += plan.events.len() as i64;
        let events = crate::db::events::numbered(&run.id, plan.state.event_seq, &plan.events, now);
        let Some(done) = plan.settled.as_ref() else {
            return Ok(None);
        };
        let w = Completion {
            worker_id: wid,
            epoch: req.epoch,
            done,
            queued: plan.queued.as_ref(),
            state: &plan.state,
            events: &events,
        };
        let claimed = match &self.next {
            Some(spec) => match batch::complete_and_claim(c, self.batcher, &snap, &w, spec)? {
                Some(got) => Some(got),
                None => return Ok(None),
            },
            None if fast::complete_apply(c.get()?, &snap, &w)? => None,
            None => return Ok(None),
        };
        tracing::info!(run_id = %run.id, step_id = %done.id, worker_id = %wid, lease_epoch = req.epoch, status = %done.status, "step completed");
        Ok(Some((run.id.clone(), plan.actions, claimed)))
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
