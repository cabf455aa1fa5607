//! Completions that reach the controller together are written together: one statement
//! (`loopd_complete_and_claim_many`, migration `2026-12-02-000007_batched_completions`), one
//! transaction and one commit for all of them. A completion's thread queues its write; when
//! fewer than [`MAX_RUNNING`] batches are under way it takes everything queued (up to
//! [`MAX_ITEMS`]) and sends it on a connection of the pool, else it waits, holding none (so
//! the pool's size does not bound the batches). A batch's end wakes only its owners, each with
//! its reply, and the first completion still queued, whose thread sends the next batch.
//! Nothing waits for company: a completion that finds the queue empty and a batch free is
//! sent at once, alone, so an idle pool sees no added latency; under load the batches grow by
//! themselves with the requests that arrived while the last ones were written.
//!
//! Each item's own checks still decide whether it applies, exactly as when it is written alone
//! (the items that lease their worker the next step directly are checked and written set by
//! set, migration `2026-12-04-000010_set_based_batches`; the others one after the other,
//! after them). Should the statement fail (an item raising an error, a deadlock, a lost
//! connection), nothing of the batch was written and each owner writes its item alone, so one
//! bad item costs the others a retry, never their write.

use super::fast::{Claimed, Completion, Done, RunVersion, Snapshot, StateVersion};
use super::leases::{self, ClaimSpec};
use super::models::{new_id, EventRow, RunStateRow, StepRow};
use super::{ConnSource, DbError};
use diesel::sql_types::{Array, Jsonb, Text};
use diesel::PgConnection;
use diesel::RunQueryDsl;
use serde::Serialize;
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

#[derive(diesel::QueryableByName)]
struct Replies {
    #[diesel(sql_type = Jsonb)]
    replies: Value,
}

/// The most completions one statement carries.
pub const MAX_ITEMS: usize = 32;
/// Batches under way at once: one keeps a Postgres backend busy; two let the next batch be
/// written while the last one commits.
pub const MAX_RUNNING: usize = 2;

/// The queue of completions waiting to be written, one per database pool.
#[derive(Default)]
pub struct Batcher {
    state: Mutex<State>,
    /// Batches written, and the completions they carried (`/metrics`).
    batches: AtomicU64,
    items: AtomicU64,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Queued>,
    running: usize,
}

/// A completion waiting in the queue, and where its thread waits.
struct Queued {
    item: Item,
    slot: Arc<Slot>,
}

/// Where one completion's thread waits: woken alone, when its batch has an answer or when it
/// is its turn to send the next batch (one condition variable for all would wake every
/// waiting thread at each batch's end: a dozen context switches a completion, measured).
#[derive(Default)]
struct Slot {
    wake: Mutex<Wake>,
    cv: Condvar,
}

/// Why a waiting thread was woken: its turns to send the next batch (two batches ending at
/// once may both hand theirs to the first completion queued), its batch's outcome, or both.
/// A turn is never dropped, or the batches under way would stay counted for ever.
#[derive(Default)]
struct Wake {
    turns: usize,
    done: Option<Outcome>,
}

impl Slot {
    fn turn(&self) {
        self.wake.lock().unwrap_or_else(|e| e.into_inner()).turns += 1;
        self.cv.notify_one();
    }

    fn done(&self, o: Outcome) {
        self.wake.lock().unwrap_or_else(|e| e.into_inner()).done = Some(o);
        self.cv.notify_one();
    }

    /// Waits until woken; what for.
    fn wait(&self) -> Wake {
        let mut g = self.wake.lock().unwrap_or_else(|e| e.into_inner());
        while g.turns == 0 && g.done.is_none() {
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        std::mem::take(&mut *g)
    }
}

/// One completion's arguments to `loopd_complete_and_claim`, as JSON text (built straight
/// from the rows, without a `serde_json::Value` in between), with its run.
struct Item {
    run_id: String,
    json: String,
}

enum Outcome {
    Reply(Value),
    /// The batch failed: the item comes back to be written alone.
    Alone(Item),
}

impl Batcher {
    /// Batches written so far, and the completions they carried.
    pub fn counts(&self) -> (u64, u64) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (load(&self.batches), load(&self.items))
    }

    /// Completions waiting for a batch to take them.
    pub fn waiting(&self) -> usize {
        self.lock().queue.len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `item` (the arguments of one `loopd_complete_and_claim`) with whatever else is
    /// queued; its reply. `c` is taken from the pool only to send a batch or to write the item
    /// alone, never while the thread waits.
    fn write(&self, c: &mut impl ConnSource, item: Item) -> Result<Value, DbError> {
        let slot = Arc::new(Slot::default());
        let mut s = self.lock();
        s.queue.push_back(Queued {
            item,
            slot: slot.clone(),
        });
        if s.running < MAX_RUNNING {
            s.running += 1;
            // Taken with the push, under one lock: a completion that arrives meanwhile finds
            // the turns as they are (and starts its own batch if one is free).
            let items = take(&mut s);
            drop(s);
            self.send(c, items);
        } else {
            drop(s);
        }
        loop {
            let woken = slot.wait();
            for _ in 0..woken.turns {
                let items = take(&mut self.lock());
                self.send(c, items);
            }
            match woken.done {
                Some(Outcome::Reply(v)) => return Ok(v),
                Some(Outcome::Alone(item)) => return one(super::fast::pg(c.get()?)?, item),
                None => {}
            }
        }
    }

    /// Sends `items` as one batch, on a turn already counted in `running`; the batch's end
    /// hands each owner its outcome and the turn on.
    fn send(&self, c: &mut impl ConnSource, items: Vec<Queued>) {
        let mut lead = Lead {
            batcher: self,
            items,
            replies: None,
        };
        if !lead.items.is_empty() {
            match c.get().and_then(super::fast::pg) {
                Ok(c) => lead.send(c),
                // Each owner then tries alone, and answers the error if it persists.
                Err(e) => tracing::warn!(error = %e, "no connection for a batch of completions"),
            }
        }
    }
}

/// What the next batch carries: the queue's first [`MAX_ITEMS`].
fn take(s: &mut State) -> Vec<Queued> {
    let n = s.queue.len().min(MAX_ITEMS);
    s.queue.drain(..n).collect()
}

/// A batch being sent. Dropping it (after the reply, or while unwinding from a panic) hands
/// every owner its outcome and frees the turn (to the first completion still queued, if any),
/// so that no owner waits for ever.
struct Lead<'a> {
    batcher: &'a Batcher,
    items: Vec<Queued>,
    replies: Option<Vec<Value>>,
}

impl Lead<'_> {
    fn send(&mut self, c: &mut PgConnection) {
        // In the order of their runs, so that two batches under way lock rows in one order.
        self.items.sort_by(|a, b| a.item.run_id.cmp(&b.item.run_id));
        let sent = call(c, self.items.iter().map(|q| &q.item));
        match sent {
            Ok(Value::Array(replies)) if replies.len() == self.items.len() => {
                let b = self.batcher;
                b.batches.fetch_add(1, Ordering::Relaxed);
                (b.items).fetch_add(replies.len() as u64, Ordering::Relaxed);
                self.replies = Some(replies);
            }
            Ok(other) => tracing::warn!(reply = %other, "a batch of completions answered oddly"),
            Err(e) => {
                tracing::warn!(error = %e, items = self.items.len(), "a batch of completions failed; writing each alone");
            }
        }
    }
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        // The turn passes on first (the next batch goes out while the owners of this one take
        // their replies): to the first completion still queued, whose thread sends it.
        let mut s = self.batcher.lock();
        match s.queue.front() {
            Some(next) => next.slot.turn(),
            None => s.running -= 1,
        }
        drop(s);
        let items = std::mem::take(&mut self.items);
        match self.replies.take() {
            Some(r) => {
                for (q, reply) in items.into_iter().zip(r) {
                    q.slot.done(Outcome::Reply(reply));
                }
            }
            None => {
                for q in items {
                    q.slot.done(Outcome::Alone(q.item));
                }
            }
        }
    }
}

/// `loopd_complete_and_claim_many` with `items`: their replies, in their order.
fn call<'a>(c: &mut PgConnection, items: impl Iterator<Item = &'a Item>) -> Result<Value, DbError> {
    let mut array = String::from("[");
    for (i, item) in items.enumerate() {
        if i > 0 {
            array.push(',');
        }
        array.push_str(&item.json);
    }
    array.push(']');
    let r: Replies =
        diesel::sql_query("SELECT loopd_complete_and_claim_many($1::jsonb, $2) AS replies")
            .bind::<Text, _>(array)
            .bind::<Array<Text>, _>(super::fast::phases())
            .get_result(c)?;
    Ok(r.replies)
}

/// `item` alone in one statement on `c`, without the queue: its reply.
fn one(c: &mut PgConnection, item: Item) -> Result<Value, DbError> {
    match call(c, std::iter::once(&item))? {
        Value::Array(mut r) if r.len() == 1 => Ok(r.remove(0)),
        other => Err(DbError::Reply(format!("a batch of one answered {other}"))),
    }
}

/// The arguments of `loopd_complete_and_claim`, named as its parameters without `p_`.
#[derive(Serialize)]
struct Args<'a> {
    step: &'a str,
    worker: &'a str,
    epoch: i64,
    run: RunVersion<'a>,
    state_before: StateVersion,
    done: Done<'a>,
    queued: Option<&'a StepRow>,
    state: &'a RunStateRow,
    events: &'a [EventRow],
    allowed: Vec<String>,
    ttl: i64,
    window: i64,
    event_ids: [String; 2],
}

/// The arguments for the completion `w` decided from `snap`, claiming next with `spec`.
fn item(
    conn: &mut impl ConnSource,
    snap: &Snapshot,
    w: &Completion<'_>,
    spec: &ClaimSpec<'_>,
) -> Result<Item, DbError> {
    debug_assert_eq!(w.worker_id, spec.worker_id);
    let args = Args {
        step: &w.done.id,
        worker: w.worker_id,
        epoch: w.epoch,
        run: RunVersion::of(snap),
        state_before: StateVersion::of(snap),
        done: Done::of(w.done),
        queued: w.queued,
        state: w.state,
        events: w.events,
        // (Computed here for a worker's few labels; a worker with many asks the database.)
        allowed: match super::models::label_subsets(spec.labels) {
            Some(all) => all,
            None => leases::allowed_sets(conn.get()?, spec.labels)?,
        },
        ttl: spec.ttl_ms,
        window: spec.affinity_window_ms,
        event_ids: [new_id(), new_id()],
    };
    Ok(Item {
        run_id: snap.run.id.clone(),
        json: serde_json::to_string(&args).map_err(|e| DbError::Reply(e.to_string()))?,
    })
}

/// Writes the completion `w` decided from `snap` and then, in the same transaction, claims
/// the next step for the same worker (`spec.worker_id`): `None`, having written nothing, when
/// `snap` no longer holds. With `batcher`, written together with the completions queued
/// there; without, alone.
pub fn complete_and_claim(
    conn: &mut impl ConnSource,
    batcher: Option<&Batcher>,
    snap: &Snapshot,
    w: &Completion<'_>,
    spec: &ClaimSpec<'_>,
) -> Result<Option<Claimed>, DbError> {
    let item = item(conn, snap, w, spec)?;
    let mut v = match batcher {
        Some(b) => b.write(conn, item)?,
        None => one(super::fast::pg(conn.get()?)?, item)?,
    };
    if v.get("applied").and_then(Value::as_bool) != Some(true) {
        return Ok(None);
    }
    let claim = v["claim"].take();
    if claim.get("direct").is_some() {
        return super::leased::claimed(claim, snap, w, spec).map(Some);
    }
    super::fast::claimed(claim).map(Some)
}
