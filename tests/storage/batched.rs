//! Completions queued together are written in one statement, each by its own checks; a batch
//! that fails writes nothing and its completions are written alone (Postgres). To make a batch
//! form for certain, the test first holds the batches that may run at once on run rows it has
//! locked, queues three completions behind them, then lets go.

use super::fast_paths::{decided, two_events};
use super::{claim, seed, spec, Store};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use loopd::db::batch::{self, Batcher, MAX_RUNNING};
use loopd::db::fast::{Claimed, Completion, Snapshot};
use loopd::db::{Conn, Db, DbError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What to make of a completion.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    /// A completion that applies.
    Good,
    /// Its lease epoch is not the step's: its check refuses it.
    Stale,
    /// Its two events share a number: its statement raises an error.
    Poisoned,
}

type Outcome = Result<Option<Claimed>, DbError>;

/// Completes `snap`'s step (leased to `worker` at `epoch`) through `b`, queuing a step for
/// the same worker, on a thread of its own.
fn complete(
    db: &Db,
    b: &Arc<Batcher>,
    snap: Snapshot,
    worker: String,
    epoch: i64,
    kind: Kind,
) -> JoinHandle<Outcome> {
    let (db, b) = (db.clone(), b.clone());
    std::thread::spawn(move || {
        let mut c = db.conn()?;
        let (done, mut queued, state) = decided(&snap);
        queued.preferred_worker_id = Some(worker.clone());
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
        batch::complete_and_claim(&mut c, Some(&b), &snap, &w, &spec(&worker, &[], 60_000))
    })
}

fn pg(c: &mut Conn) -> &mut PgConnection {
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

/// `MAX_RUNNING` good completions held on locked runs, then `kinds` queued behind them;
/// every outcome in that order, with each run's steps' statuses afterwards.
fn behind_held_batches(s: &Store, kinds: &[Kind]) -> Vec<(Kind, Outcome, Vec<String>)> {
    let b = s.db.batcher().expect("a Postgres pool batches completions");
    let all: Vec<Kind> = [vec![Kind::Good; MAX_RUNNING], kinds.to_vec()].concat();
    let mut c = s.db.conn().unwrap();
    let claimed: Vec<_> = (0..all.len())
        .map(|i| {
            let (run, _) = seed(&s.db, "RUNNING", "", 1);
            let worker = format!("w{i}");
            let g = claim(&mut c, &worker, &[], 60_000).expect("claimed");
            (run, worker, g)
        })
        .collect();
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
    for (i, ((_, worker, g), kind)) in claimed.iter().zip(&all).enumerate() {
        let snap = g.next.clone().expect("the claim's snapshot");
        threads.push(complete(
            &s.db,
            &b,
            snap,
            worker.clone(),
            g.lease.epoch,
            *kind,
        ));
        if i + 1 == MAX_RUNNING {
            until("the first batches wait on the locked runs", || {
                diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
                    "(SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                     AND datname = current_database())",
                ))
                .get_result::<i64>(pg(&mut c))
                .unwrap()
                    == MAX_RUNNING as i64
            });
        }
    }
    until("the rest are queued", || b.waiting() == kinds.len());
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

/// Each good completion written with its next step leased; each other one answered as
/// `refused` says, with nothing of it written.
fn each_by_its_own_checks(got: &[(Kind, Outcome, Vec<String>)], refused: fn(&Outcome) -> bool) {
    for (kind, out, statuses) in got {
        if *kind == Kind::Good {
            assert!(matches!(out, Ok(Some(Claimed::Got(_)))), "{out:?}");
            assert_eq!(statuses, &["SUCCEEDED", "IN_PROGRESS"]);
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
    let got = behind_held_batches(&s, &[Kind::Good, Kind::Stale, Kind::Good]);
    // A stale write is refused.
    each_by_its_own_checks(&got, |out| matches!(out, Ok(None)));
    let b = s.db.batcher().unwrap();
    assert_eq!(
        b.counts(),
        (MAX_RUNNING as u64 + 1, MAX_RUNNING as u64 + 3),
        "the three queued completions went in one statement"
    );
}

pub fn a_failing_batch_writes_nothing_and_its_completions_are_written_alone(s: Store) {
    let got = behind_held_batches(&s, &[Kind::Good, Kind::Poisoned, Kind::Good]);
    // The poisoned one gets its own error.
    each_by_its_own_checks(&got, |out| matches!(out, Err(DbError::Query(_))));
    let b = s.db.batcher().unwrap();
    assert_eq!(
        b.counts(),
        (MAX_RUNNING as u64, MAX_RUNNING as u64),
        "the failed batch is not counted as written"
    );
}
