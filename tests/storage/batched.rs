//! Completions queued together are written in one statement, each by its own checks; a batch
//! that fails writes nothing and its completions are written alone (Postgres). To make a batch
//! form for certain, the test first holds the batches that may run at once on run rows it has
//! locked, queues three completions behind them, then lets go. Completions wait from blocking
//! threads (as a completion decided from a fresh snapshot does) or from a runtime's tasks (as
//! the controller's requests do), which hold no thread while they wait.

use super::direct::written_as_alone;
use super::fast_paths::{decided, two_events};
use super::{claim, seed, spec, Store};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{Array, Integer};
use loopd::db::batch::{self, Batcher, MAX_RUNNING};
use loopd::db::fast::{Claimed, Completion, Snapshot};
use loopd::db::models::RunRow;
use loopd::db::{Conn, Db, DbError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::runtime::{Handle, Runtime};

/// What to make of a completion.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    /// A completion that applies.
    Good,
    /// Its lease epoch is not the step's: its check refuses it.
    Stale,
    /// Its run's row was updated after the snapshot (a note that no decision reads): a new
    /// version of the row, which its check refuses.
    RunMoved,
    /// Its run's state was updated after the snapshot: likewise refused.
    StateMoved,
    /// Its two events share a number: its statement raises an error.
    Poisoned,
    /// The completion before it again, as a worker repeating its request sends it.
    Repeat,
    /// Its next step waits for no worker in particular: the worker claims it (not leased
    /// directly by the completion).
    Undirected,
}

type Outcome = Result<Option<Claimed>, DbError>;

/// Completes `snap`'s step (leased to `worker` at `epoch`) through `b`, queuing a step for
/// the same worker, on a thread of its own; with `rt`, the thread builds the write and a task
/// of `rt` waits for its batch.
fn complete(
    db: &Db,
    b: &Arc<Batcher>,
    snap: Snapshot,
    (worker, epoch): (String, i64),
    kind: Kind,
    rt: Option<Handle>,
) -> JoinHandle<Outcome> {
    let (db, b) = (db.clone(), b.clone());
    std::thread::spawn(move || {
        // Holding no connection while it waits, as the controller's completions do.
        let mut c = loopd::db::LazyConn::new(&db);
        let (mut done, mut queued, state) = decided(&snap);
        // What a worker reports, each its own (see `written_as_alone`).
        done.output_tail = Some(format!("tail of {}", done.id));
        done.runner_notes = Some(format!("notes of {}", done.id));
        done.output_path = Some(format!("{}.log", done.id));
        done.completion_detected = Some(true);
        queued.preferred_worker_id = (kind != Kind::Undirected).then(|| worker.clone());
        let mut evs = two_events(&snap, &queued, state.event_seq);
        if kind == Kind::Poisoned {
            evs[1].run_seq = evs[0].run_seq;
        }
        let w = Completion {
            worker_id: &worker,
            epoch: if kind == Kind::Stale {
                epoch + 1
            } else {
                epoch
            },
            done: &done,
            queued: Some(&queued),
            state: &state,
            events: &evs,
        };
        let spec = spec(&worker, &[], 60_000);
        let Some(rt) = rt else {
            return batch::complete_and_claim(&mut c, Some(&b), &snap, &w, &spec);
        };
        let item = batch::item(&mut c, &snap, &w, &spec)?;
        let waited = rt.block_on(rt.spawn(async move { b.write(item).await }));
        batch::answer(waited.expect("the task ends")?, &snap, &w, &spec)
    })
}

pub(super) fn pg(c: &mut Conn) -> &mut PgConnection {
    match c {
        Conn::Pg(c) => c,
        Conn::Sqlite(_) => panic!("Postgres only"),
    }
}

/// Waits (30 s at most) for `done` to hold.
fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Backends of the test's database waiting on a lock, but those in `except`.
fn lock_waiters(c: &mut Conn, except: &[i32]) -> usize {
    diesel::select(
        diesel::dsl::sql::<diesel::sql_types::BigInt>(
            "(SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
              AND datname = current_database() AND pid <> ALL (",
        )
        .bind::<Array<Integer>, _>(except)
        .sql("))"),
    )
    .get_result::<i64>(pg(c))
    .unwrap() as usize
}

/// `MAX_RUNNING` good completions held on locked runs, then `kinds` queued behind them (by
/// tasks of `rt` if given, else by threads); with `lose`, the held batches' connections are
/// then lost (their backends terminated) before the runs are let go. Every outcome in that
/// order, with each run's steps' statuses afterwards.
fn behind_held_batches(
    s: &Store,
    kinds: &[Kind],
    rt: Option<&Runtime>,
    lose: bool,
) -> Vec<(Kind, Outcome, Vec<String>)> {
    let b = s.db.batcher().expect("a Postgres pool batches completions");
    let all: Vec<Kind> = [vec![Kind::Good; MAX_RUNNING], kinds.to_vec()].concat();
    let mut c = s.db.conn().unwrap();
    // Each completion's run, worker, snapshot and lease epoch.
    let mut claimed: Vec<(RunRow, String, Snapshot, i64)> = Vec::new();
    for (i, kind) in all.iter().enumerate() {
        if *kind == Kind::Repeat {
            claimed.push(claimed.last().expect("a completion to repeat").clone());
            continue;
        }
        let (run, _) = seed(&s.db, "RUNNING", "", 1);
        let worker = format!("w{i}");
        let g = claim(&mut c, &worker, &[], 60_000).expect("claimed");
        let snap = g.next.expect("the claim's snapshot");
        let moved = match kind {
            Kind::RunMoved => "UPDATE runs SET waiting_reason = 'moved' WHERE id = $1",
            Kind::StateMoved => "UPDATE run_state SET pending_prompt = 'moved' WHERE run_id = $1",
            _ => "",
        };
        if !moved.is_empty() {
            diesel::sql_query(moved)
                .bind::<diesel::sql_types::Text, _>(&run.id)
                .execute(pg(&mut c))
                .unwrap();
        }
        claimed.push((run, worker, snap, g.lease.epoch));
    }
    let mut lock = s.db.conn().unwrap();
    let held: Vec<String> = claimed[..MAX_RUNNING]
        .iter()
        .map(|(r, ..)| format!("'{}'", r.id))
        .collect();
    pg(&mut lock)
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM runs WHERE id IN ({}) FOR UPDATE",
            held.join(", ")
        ))
        .unwrap();
    let mut threads = Vec::new();
    for (i, ((_, worker, snap, epoch), kind)) in claimed.iter().zip(&all).enumerate() {
        threads.push(complete(
            &s.db,
            &b,
            snap.clone(),
            (worker.clone(), *epoch),
            *kind,
            rt.map(|rt| rt.handle().clone()),
        ));
        if i + 1 == MAX_RUNNING {
            until("the first batches wait on the locked runs", || {
                lock_waiters(&mut c, &[]) == MAX_RUNNING
            });
        }
    }
    until("the rest are queued", || b.waiting() == kinds.len());
    if lose {
        let lost: Vec<i32> = diesel::select(diesel::dsl::sql::<Array<Integer>>(
            // (The waiting backends first: a condition beside them could be checked after.)
            "(WITH w AS MATERIALIZED (SELECT pid FROM pg_stat_activity \
                WHERE wait_event_type = 'Lock' AND datname = current_database()) \
              SELECT coalesce(array_agg(pid), '{}') FROM w WHERE pg_terminate_backend(pid))",
        ))
        .get_result(pg(&mut c))
        .unwrap();
        assert_eq!(
            lost.len(),
            MAX_RUNNING,
            "the held batches' backends terminated"
        );
        // Their completions, written alone on fresh connections, wait on the runs again.
        until("the held completions wait again, alone", || {
            lock_waiters(&mut c, &lost) == MAX_RUNNING
        });
    }
    pg(&mut lock).batch_execute("ROLLBACK").unwrap();
    let outcomes: Vec<Outcome> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    claimed
        .iter()
        .zip(all)
        .zip(outcomes)
        .map(|(((run, ..), kind), out)| {
            let steps = loopd::db::steps::for_run(&mut c, &run.id).unwrap();
            (kind, out, steps.into_iter().map(|s| s.status).collect())
        })
        .collect()
}

/// Each good completion written with its next step leased, as the lone path writes it; each
/// other one answered as `refused` says, with nothing of it written.
fn each_by_its_own_checks(
    s: &Store,
    got: &[(Kind, Outcome, Vec<String>)],
    refused: fn(&Outcome) -> bool,
) {
    for (kind, out, statuses) in got {
        if *kind == Kind::Good {
            let Ok(Some(Claimed::Got(n))) = out else {
                panic!("{out:?}");
            };
            assert_eq!(statuses, &["SUCCEEDED", "IN_PROGRESS"]);
            written_as_alone(s, n);
        } else {
            assert!(refused(out), "{kind:?}: {out:?}");
            assert_eq!(
                statuses,
                &["IN_PROGRESS"],
                "{kind:?}: nothing of it written"
            );
        }
    }
}

pub fn completions_queued_together_are_written_in_one_statement_each_by_its_own_checks(s: Store) {
    let kinds = [
        Kind::Good,
        Kind::Stale,
        Kind::RunMoved,
        Kind::StateMoved,
        Kind::Good,
    ];
    let got = behind_held_batches(&s, &kinds, None, false);
    // A stale write, and one whose run or state moved since its snapshot, is refused.
    each_by_its_own_checks(&s, &got, |out| matches!(out, Ok(None)));
    let b = s.db.batcher().unwrap();
    assert_eq!(
        b.counts(),
        (MAX_RUNNING as u64 + 1, MAX_RUNNING as u64 + 5),
        "the five queued completions went in one statement"
    );
}

/// `n` good completions queued behind the held batches (by tasks of `rt` if given): all
/// written, in one statement.
fn all_in_one_statement(s: &Store, n: usize, rt: Option<&Runtime>) {
    let got = behind_held_batches(s, &vec![Kind::Good; n], rt, false);
    each_by_its_own_checks(s, &got, |_| false);
    assert_eq!(
        s.db.batcher().unwrap().counts(),
        (MAX_RUNNING as u64 + 1, (MAX_RUNNING + n) as u64),
        "the queued completions went in one statement"
    );
}

/// More completions wait for their batch than the pool has connections left (the test holds
/// two, the held batches two more): waiting, they hold none, and all go in one statement.
pub fn completions_waiting_for_their_batch_hold_no_connection(s: Store) {
    all_in_one_statement(&s, super::POOL, None);
}

/// Completions awaited by tasks of a runtime whose blocking threads are only enough for the
/// batches under way (held on locked runs): waiting, the tasks hold no thread, so all of them
/// are queued, and go in one statement. (A wait that took a blocking thread each would never
/// reach the queue: the test would time out.)
pub fn completions_waiting_for_their_batch_hold_no_thread(s: Store) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(MAX_RUNNING)
        .build()
        .unwrap();
    all_in_one_statement(&s, 6, Some(&rt));
}

pub fn a_failing_batch_writes_nothing_and_its_completions_are_written_alone(s: Store) {
    let got = behind_held_batches(&s, &[Kind::Good, Kind::Poisoned, Kind::Good], None, false);
    // The poisoned one gets its own error.
    each_by_its_own_checks(&s, &got, |out| matches!(out, Err(DbError::Query(_))));
    let b = s.db.batcher().unwrap();
    assert_eq!(
        b.counts(),
        (MAX_RUNNING as u64, MAX_RUNNING as u64),
        "the failed batch is not counted as written"
    );
}

/// The connections of the batches under way are lost while they wait (their backends
/// terminated): nothing of those batches was written, so each of their completions is written
/// alone, on a fresh connection (the lost one is not used again), and the completions queued
/// meanwhile go in one statement after them.
pub fn a_batch_whose_connection_is_lost_is_written_alone_on_a_fresh_one(s: Store) {
    let got = behind_held_batches(&s, &[Kind::Good, Kind::Good], None, true);
    each_by_its_own_checks(&s, &got, |_| false);
    assert_eq!(
        s.db.batcher().unwrap().counts(),
        (1, 2),
        "the lost batches are not counted as written; the queued two went in one"
    );
}

/// A completion and its repeat queued in one batch: written once (the repeat finds the lease
/// gone), beside the others of the batch, all in one statement.
pub fn a_completion_repeated_within_a_batch_is_written_once(s: Store) {
    let got = behind_held_batches(
        &s,
        &[Kind::Good, Kind::Repeat, Kind::Undirected],
        None,
        false,
    );
    let (first, repeat) = (&got[MAX_RUNNING], &got[MAX_RUNNING + 1]);
    let leased = |o: &Outcome| matches!(o, Ok(Some(Claimed::Got(_))));
    assert!(
        leased(&first.1) != leased(&repeat.1),
        "exactly one of the two applies: {:?} / {:?}",
        first.1,
        repeat.1
    );
    assert!(matches!(first.1, Ok(None)) || matches!(repeat.1, Ok(None)));
    assert_eq!(first.2, ["SUCCEEDED", "IN_PROGRESS"], "one next step");
    // The completion whose worker claims its next step, in the same statement.
    let (kind, out, statuses) = &got[MAX_RUNNING + 2];
    assert_eq!(*kind, Kind::Undirected);
    assert!(leased(out), "{out:?}");
    assert_eq!(statuses, &["SUCCEEDED", "IN_PROGRESS"]);
    let b = s.db.batcher().unwrap();
    assert_eq!(
        b.counts(),
        (MAX_RUNNING as u64 + 1, MAX_RUNNING as u64 + 3),
        "the three queued completions went in one statement"
    );
}
