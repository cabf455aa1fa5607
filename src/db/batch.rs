//! Completions that reach the controller together are written together: one statement
//! (`loopd_complete_and_claim_many`, `src/db/pg/loopd_complete_and_claim_many.sql`), one
//! transaction and one commit for all of them. A completion is queued with the sender half of
//! a one-shot channel and its caller waits on the other half: a request's task awaits it
//! without a thread of its own (a blocking caller blocks on it). When fewer than
//! [`MAX_RUNNING`] batches are under way, the completion queued starts a driver on a blocking
//! thread: it takes everything queued (up to [`MAX_ITEMS`]), sends it on one connection,
//! hands each owner its reply, and goes on with what was queued meanwhile until the queue is
//! empty. Waiting completions hold no connection and no thread, so neither the pool's size nor
//! the blocking threads bound the batches, and a completion costs no thread switch of its own.
//! Nothing waits for company: a completion that finds the queue empty and a batch free is sent
//! at once, alone, so an idle pool sees no added latency; under load the batches grow by
//! themselves with the requests that arrived while the last ones were written.
//!
//! Each item's own checks still decide whether it applies, exactly as when it is written alone
//! (the items that lease their worker the next step directly are checked and written set by
//! set, migration `2026-12-04-000010_set_based_batches`; the others one after the other,
//! after them). Should the statement fail (an item raising an error, a deadlock, a lost
//! connection), nothing of the batch was written and the driver writes each item alone, so one
//! bad item costs the others a retry, never their write.

use super::fast::{Claimed, Completion, Done, RunVersion, Snapshot, StateVersion};
use super::leases::{self, ClaimSpec};
use super::models::{new_id, EventRow, RunStateRow, StepRow};
use super::{Conn, ConnSource, Db, DbError};
use diesel::sql_types::{Array, Jsonb, Text};
use diesel::PgConnection;
use diesel::RunQueryDsl;
use serde::Serialize;
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;

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
pub struct Batcher {
    /// Where the drivers take their connections: the pool's handle without this batcher (no
    /// cycle between the two).
    db: Db,
    state: Mutex<State>,
    /// Batches written, and the completions they carried (`/metrics`).
    batches: AtomicU64,
    items: AtomicU64,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Queued>,
    /// Drivers under way.
    running: usize,
}

/// A completion waiting in the queue, and where its reply goes.
struct Queued {
    item: Item,
    reply: oneshot::Sender<Result<Value, DbError>>,
}

/// One completion's arguments to `loopd_complete_and_claim`, as JSON text (built straight
/// from the rows, without a `serde_json::Value` in between), with its run.
pub struct Item {
    run_id: String,
    json: String,
}

impl Batcher {
    /// The queue of the pool `db` (a handle that has no batcher itself).
    pub(super) fn new(db: Db) -> Batcher {
        Batcher {
            db,
            state: Mutex::default(),
            batches: AtomicU64::new(0),
            items: AtomicU64::new(0),
        }
    }

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

    /// The reply to `item` (the arguments of one `loopd_complete_and_claim`), written with
    /// whatever else is queued. The task waits without a thread or a connection.
    pub async fn write(self: &Arc<Self>, item: Item) -> Result<Value, DbError> {
        self.queue(item).await.unwrap_or_else(|_| Err(unanswered()))
    }

    /// [`Batcher::write`] for a blocking thread (never on an async one).
    pub fn write_blocking(self: &Arc<Self>, item: Item) -> Result<Value, DbError> {
        (self.queue(item).blocking_recv()).unwrap_or_else(|_| Err(unanswered()))
    }

    /// Queues `item`, starting a driver if fewer than [`MAX_RUNNING`] are under way.
    fn queue(self: &Arc<Self>, item: Item) -> oneshot::Receiver<Result<Value, DbError>> {
        let (reply, answer) = oneshot::channel();
        let mut s = self.lock();
        s.queue.push_back(Queued { item, reply });
        if s.running < MAX_RUNNING {
            s.running += 1;
            // Taken with the push, under one lock: a completion that arrives meanwhile finds
            // the drivers as they are (and starts one if one is free).
            let items = take(&mut s);
            drop(s);
            self.start(items);
        }
        answer
    }

    /// A driver for `items`, on a turn already counted in `running`: on the runtime's blocking
    /// threads (the controller), or on a thread of its own where there is no runtime.
    fn start(self: &Arc<Self>, items: Vec<Queued>) {
        // Owned by the driver from here: should the runtime drop it unrun (shutting down), the
        // turn still passes on.
        let turn = Turn(self.clone());
        let drive = move || turn.drive(items);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(drive)),
            Err(_) => drop(std::thread::spawn(drive)),
        }
    }

    /// Sends `items` as one batch on `conn` (taken from the pool if empty) and hands each
    /// owner its reply.
    fn send(&self, conn: &mut Option<Conn>, mut items: Vec<Queued>) {
        // In the order of their runs, so that two batches under way lock rows in one order.
        items.sort_by(|a, b| a.item.run_id.cmp(&b.item.run_id));
        match self.on(conn, |pg| call(pg, items.iter().map(|q| &q.item))) {
            Ok(Value::Array(replies)) if replies.len() == items.len() => {
                self.batches.fetch_add(1, Ordering::Relaxed);
                (self.items).fetch_add(replies.len() as u64, Ordering::Relaxed);
                for (q, r) in items.into_iter().zip(replies) {
                    // (An owner that went away still had its completion written.)
                    let _ = q.reply.send(Ok(r));
                }
                return;
            }
            Ok(other) => tracing::warn!(reply = %other, "a batch of completions answered oddly"),
            Err(e) => {
                tracing::warn!(error = %e, items = items.len(), "a batch of completions failed; writing each alone");
            }
        }
        // Each alone; its own error to its owner.
        for Queued { item, reply } in items {
            let _ = reply.send(self.on(conn, |pg| one(pg, item)));
        }
    }

    /// `f` on the driver's connection, taken from the pool if it has none. After an error the
    /// connection is checked and given back (the pool tests it when it is suspect), so that a
    /// lost one is not used again.
    fn on<R>(
        &self,
        conn: &mut Option<Conn>,
        f: impl FnOnce(&mut PgConnection) -> Result<R, DbError>,
    ) -> Result<R, DbError> {
        if conn.is_none() {
            *conn = Some(self.db.conn()?);
        }
        let c = conn.as_mut().expect("taken above");
        let r = super::fast::pg(c).and_then(f);
        if r.is_err() {
            self.db.check_after_error(c);
            *conn = None;
        }
        r
    }
}

/// The error of a completion whose driver ended without answering it (it panicked).
fn unanswered() -> DbError {
    DbError::Join("a batch of completions ended without an answer".into())
}

/// A driver's turn, counted in `running`. Ending (after the queue emptied, or while unwinding
/// from a panic), it gives the turn back, or hands what is queued to a new driver, so that
/// nothing queued is left without one.
struct Turn(Arc<Batcher>);

impl Turn {
    /// Sends `items`, then what was queued meanwhile, batch after batch on one connection,
    /// until the queue is empty.
    fn drive(self, mut items: Vec<Queued>) {
        let mut conn = None;
        loop {
            self.0.send(&mut conn, items);
            let mut s = self.0.lock();
            if s.queue.is_empty() {
                break;
            }
            items = take(&mut s);
        }
        // (The connection goes back to the pool before the turn is given back.)
        drop(conn);
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        if s.queue.is_empty() {
            s.running -= 1;
            return;
        }
        let items = take(&mut s);
        drop(s);
        self.0.start(items);
    }
}

/// What the next batch carries: the queue's first [`MAX_ITEMS`].
fn take(s: &mut State) -> Vec<Queued> {
    let n = s.queue.len().min(MAX_ITEMS);
    s.queue.drain(..n).collect()
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
pub fn item(
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
    batcher: Option<&Arc<Batcher>>,
    snap: &Snapshot,
    w: &Completion<'_>,
    spec: &ClaimSpec<'_>,
) -> Result<Option<Claimed>, DbError> {
    let item = item(conn, snap, w, spec)?;
    let reply = match batcher {
        Some(b) => b.write_blocking(item)?,
        None => one(super::fast::pg(conn.get()?)?, item)?,
    };
    answer(reply, snap, w, spec)
}

/// What the statement answered for the completion `w` decided from `snap` (its [`item`]):
/// the claim it made, or `None` when `snap` no longer held and nothing was written.
pub fn answer(
    mut reply: Value,
    snap: &Snapshot,
    w: &Completion<'_>,
    spec: &ClaimSpec<'_>,
) -> Result<Option<Claimed>, DbError> {
    if reply.get("applied").and_then(Value::as_bool) != Some(true) {
        return Ok(None);
    }
    let claim = reply["claim"].take();
    if claim.get("direct").is_some() {
        return super::leased::claimed(claim, snap, w, spec).map(Some);
    }
    super::fast::claimed(claim).map(Some)
}
