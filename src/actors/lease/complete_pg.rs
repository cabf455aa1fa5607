//! A completion on Postgres without artifacts: read everything in one statement (or take what
//! the claim read), decide in Rust, write in one statement that first checks nothing moved.
//! When the worker also asks for its next step, the decision is made on a blocking thread and
//! the request's task then waits for its batch ([`crate::db::batch`]) holding no thread: the
//! batch's driver answers it. When neither the claim's snapshot nor a fresh one holds, the
//! transactional path ([`record_in_tx`](super::completion::record_in_tx), which SQLite always
//! takes) does it. Called by the lease service's completion ([`complete`]).

use super::completion::{completed, note_in_state};
use super::error::LeaseError;
use crate::actors::run_progress::decide::{self, decides, Plan};
use crate::actors::run_progress::outcome::Advanced;
use crate::api::CompleteRequest;
use crate::db::batch;
use crate::db::fast::{self, Claimed, Completion, Snapshot};
use crate::db::leases::ClaimSpec;
use crate::db::models::EventRow;
use crate::db::{ConnSource, Db, DbError};
use crate::output_store::OutputStore;
use crate::workspace::mirror::Mirrors;
use std::sync::Arc;

/// A completion the Postgres path wrote: its run, what was decided for it, and the claim made
/// in the same statement when one was asked for (with the output held for the claimed step).
pub struct Written {
    pub run_id: String,
    pub actions: Vec<Advanced>,
    pub claimed: Option<(Claimed, u64)>,
}

/// A completion without artifacts on Postgres in one or two statements: `Some` when done,
/// `None` when the transactional path must do it (the lease is not this worker's, the run is
/// not going on or has another step in flight, or something moved between the read and the
/// write). It decides from what the claim read (`kept`) when it can (one statement: the write,
/// which checks that nothing moved), else from a fresh snapshot. With the worker's labels in
/// `w`, the write's statement also claims the worker's next step.
pub async fn complete(
    db: &Db,
    output: &OutputStore,
    mut kept: Option<Snapshot>,
    w: Writer,
) -> Result<Option<Written>, LeaseError> {
    let w = Arc::new(w);
    // From `kept`, then once more from a fresh snapshot if that no longer holds.
    loop {
        let fresh = kept.is_none();
        let (wr, snap, batcher) = (w.clone(), kept.take(), db.batcher());
        // Decided on a blocking thread, and written there when it claims nothing; a
        // completion that claims goes through the batcher (Postgres always has one).
        let decided = db
            .run_lazy(move |c| -> Result<_, LeaseError> {
                let snap = match snap {
                    Some(s) => s,
                    None => match fast::complete_snapshot(c.get()?, &wr.step_id)? {
                        Some(s) => s,
                        None => return Ok(None),
                    },
                };
                let Some(d) = wr.decide(snap)? else {
                    return Ok(None);
                };
                let w = d.completion(&wr);
                let write = match (wr.spec(), batcher) {
                    (Some(spec), Some(b)) => Write::Queue(b, batch::item(c, &d.snap, &w, &spec)?),
                    _ => Write::Applied(fast::complete_apply(c.get()?, &d.snap, &w)?),
                };
                Ok(Some((d, write)))
            })
            .await?;
        let Some((mut d, write)) = decided else {
            return Ok(None);
        };
        // `None` when the snapshot no longer held (nothing written); else the claim made.
        let outcome = match write {
            Write::Applied(applied) => applied.then_some(None),
            Write::Queue(b, item) => {
                // The batch's answer, awaited without a thread.
                let reply = b.write(item).await?;
                let spec = w.spec().expect("queued with a claim");
                batch::answer(reply, &d.snap, &d.completion(&w), &spec)?.map(Some)
            }
        };
        let Some(claimed) = outcome else {
            if fresh {
                return Ok(None);
            }
            continue;
        };
        w.log(&d);
        let claimed = match claimed {
            Some(got) => {
                let offset = output_of(db, output, &d, &got).await;
                Some((got, offset))
            }
            None => None,
        };
        return Ok(Some(Written {
            run_id: d.snap.run.id.clone(),
            actions: std::mem::take(&mut d.plan.actions),
            claimed,
        }));
    }
}

/// The output the controller holds for the step `got` claims: none for the step the
/// completion itself queued (its id was made for it) and one at its first lease (output is
/// written under a lease), else its size.
async fn output_of(db: &Db, output: &OutputStore, d: &Decided, got: &Claimed) -> u64 {
    let queued = d.plan.queued.as_ref().map(|q| q.id.as_str());
    match got {
        Claimed::Got(g) if Some(g.step.id.as_str()) == queued => 0,
        Claimed::Got(g) if g.lease.epoch <= 1 => 0,
        Claimed::Got(g) => {
            let (output, run, step) = (output.clone(), g.run.id.clone(), g.step.id.clone());
            let held = db
                .run(move |c| Ok::<_, DbError>(output.size(c, &run, &step)?))
                .await;
            // Unknown: the worker resends from its start, and what is held is absorbed.
            held.unwrap_or(0)
        }
        _ => 0,
    }
}

/// One completion, written from snapshots.
pub struct Writer {
    worker_id: String,
    step_id: String,
    req: CompleteRequest,
    digest: String,
    mirrors: Arc<Mirrors>,
    /// The worker's labels, for the next claim the write's statement makes.
    labels: Option<Vec<String>>,
    ttl: i64,
    window: i64,
}

/// How a decided completion is written: alone, already (whether it applied), or by a batch.
enum Write {
    Applied(bool),
    Queue(Arc<batch::Batcher>, batch::Item),
}

/// A completion decided from a snapshot, not yet written.
struct Decided {
    snap: Snapshot,
    plan: Plan,
    events: Vec<EventRow>,
}

impl Decided {
    /// The write, as the statements take it.
    fn completion<'a>(&'a self, w: &'a Writer) -> Completion<'a> {
        Completion {
            worker_id: &w.worker_id,
            epoch: w.req.epoch,
            done: self
                .plan
                .settled
                .as_ref()
                .expect("decided with a settled step"),
            queued: self.plan.queued.as_ref(),
            state: &self.plan.state,
            events: &self.events,
        }
    }
}

impl Writer {
    /// The completion `req` of `step_id` by `worker_id` (`digest`: its fingerprint); with
    /// `next` (the worker's labels), its next step is claimed with the claim's lease time and
    /// affinity window `times`.
    pub fn new(
        worker_id: &str,
        step_id: &str,
        req: &CompleteRequest,
        digest: &str,
        mirrors: Arc<Mirrors>,
        next: Option<&[String]>,
        (ttl, window): (i64, i64),
    ) -> Self {
        Writer {
            worker_id: worker_id.to_string(),
            step_id: step_id.to_string(),
            req: req.clone(),
            digest: digest.to_string(),
            mirrors,
            labels: next.map(<[String]>::to_vec),
            ttl,
            window,
        }
    }

    /// The next claim the write's statement makes, if the worker asked for one.
    fn spec(&self) -> Option<ClaimSpec<'_>> {
        self.labels.as_deref().map(|labels| ClaimSpec {
            worker_id: &self.worker_id,
            labels,
            ttl_ms: self.ttl,
            affinity_window_ms: self.window,
        })
    }

    /// Decides from `snap`; `None` when it does not apply (not this worker's lease, or the
    /// run does not decide here).
    fn decide(&self, mut snap: Snapshot) -> Result<Option<Decided>, LeaseError> {
        let (wid, req) = (self.worker_id.as_str(), &self.req);
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
        let event = completed(&mut step, run.run_status(), req, &self.digest, now);
        note_in_state(&mut state, req, wid);
        let mut plan = decide::plan(
            &mut snap,
            &run,
            state,
            Some(step),
            vec![event],
            &self.mirrors,
            now,
        )
        .map_err(LeaseError::from_decision)?;
        if plan.settled.is_none() {
            return Ok(None);
        }
        plan.state.event_seq += plan.events.len() as i64;
        let events = crate::db::events::numbered(&run.id, plan.state.event_seq, &plan.events, now);
        Ok(Some(Decided { snap, plan, events }))
    }

    fn log(&self, d: &Decided) {
        let done = d.plan.settled.as_ref().map_or("", |s| s.id.as_str());
        let status = d.plan.settled.as_ref().map_or("", |s| s.status.as_str());
        tracing::info!(run_id = %d.snap.run.id, step_id = %done, worker_id = %self.worker_id, lease_epoch = self.req.epoch, status = %status, "step completed");
    }
}
