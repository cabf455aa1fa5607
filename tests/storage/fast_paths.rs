//! The one-statement paths: a claim records its events like the transactional one did (both
//! backends), and a completion decided from a snapshot is written whole, or not at all when
//! anything moved since the snapshot (Postgres).

use super::{claim, seed, Store};
use loopd::db::events::{self, NewEvent};
use loopd::db::fast::{self, Completion, Snapshot};
use loopd::db::models::StepRow;
use loopd::db::{self, Conn};
use loopd::domain::time::rfc3339;
use serde_json::{json, Value};

pub fn a_claim_records_lease_granted_and_step_started(s: Store) {
    let (run, ids) = seed(&s.db, "RUNNING", "", 1);
    let mut c = s.db.conn().unwrap();
    let g = claim(&mut c, "w", &[], 60_000).expect("claimed");
    assert_eq!(g.run.id, run.id);
    assert_eq!(
        g.state.event_seq, 2,
        "the state comes back with both numbers taken"
    );
    assert_eq!(g.lease.expires_at, g.now + 60_000);
    let evs = events::for_run(&mut c, &run.id).unwrap();
    let got: Vec<(Option<i64>, &str, Value)> = evs
        .iter()
        .map(|e| {
            let p = serde_json::from_str(&e.payload_json).unwrap();
            (e.run_seq, e.event_type.as_str(), p)
        })
        .collect();
    let id = &ids[0];
    assert_eq!(
        got,
        vec![
            (
                Some(1),
                "LEASE_GRANTED",
                json!({"step_id": id, "worker_id": "w", "epoch": 1,
                       "expires_at": rfc3339(g.lease.expires_at)})
            ),
            (
                Some(2),
                "STEP_STARTED",
                json!({"step_id": id, "phase": "implementation", "attempt": 1,
                       "worker_id": "w", "epoch": 1})
            ),
        ]
    );
    assert!(evs.iter().all(|e| e.created_at == g.now));
}

/// A claimed step of a fresh run, and the completion a worker would have decided from a
/// snapshot: the step succeeded and settled, a verification queued, two events.
fn decided(snap: &Snapshot) -> (StepRow, StepRow, db::models::RunStateRow) {
    let mut done = snap.step.clone();
    done.status = "SUCCEEDED".into();
    done.settled = true;
    done.ended_at = Some(snap.now);
    done.exit_code = Some(0);
    done.completion_digest = Some("d".into());
    let queued = StepRow::new(
        &snap.run.id,
        done.seq + 1,
        "verification",
        "QUEUED",
        snap.now,
    );
    let mut state = snap.state.clone();
    state.iterations_done += 1;
    state.last_worker_id = Some("w".into());
    state.event_seq += 2;
    (done, queued, state)
}

fn two_events(snap: &Snapshot, queued: &StepRow, last: i64) -> Vec<db::models::EventRow> {
    let list = [
        NewEvent {
            step_id: Some(snap.step.id.clone()),
            event_type: "STEP_FINISHED",
            payload: json!({"step_id": snap.step.id}),
        },
        NewEvent {
            step_id: Some(queued.id.clone()),
            event_type: "STEP_QUEUED",
            payload: json!({"step_id": queued.id}),
        },
    ];
    events::numbered(&snap.run.id, last, &list, snap.now)
}

pub fn a_completion_written_from_a_snapshot_changes_everything_at_once(s: Store) {
    let (run, ids) = seed(&s.db, "RUNNING", "", 1);
    let mut c = s.db.conn().unwrap();
    let g = claim(&mut c, "w", &[], 60_000).unwrap();
    let fresh = fast::complete_snapshot(&mut c, &ids[0])
        .unwrap()
        .expect("snapshot");
    assert_eq!(fresh.lease.as_ref().map(|l| l.epoch), Some(1));
    assert!(!fresh.inputs.others_active);
    assert_eq!(fresh.inputs.attempts.get("implementation"), Some(&1));
    assert_eq!(
        fresh.step.prompt, None,
        "the snapshot leaves the prompt out"
    );
    // What the claim read is what a snapshot reads now: the completion can skip reading.
    let snap = g.next.clone().expect("the claim's snapshot");
    assert_eq!(
        (&snap.run_json, &snap.state_json),
        (&fresh.run_json, &fresh.state_json)
    );
    assert_eq!(snap.inputs.attempts, fresh.inputs.attempts);
    assert_eq!(snap.step.prompt, None);
    let (done, queued, state) = decided(&snap);
    let evs = two_events(&snap, &queued, state.event_seq);
    // A note for people on the run (no decision reads it) does not stop the write.
    db::runs::set_waiting_reason(&mut c, &run.id, Some("waiting for a worker")).unwrap();
    let w = Completion {
        worker_id: "w",
        epoch: g.lease.epoch,
        done: &done,
        queued: Some(&queued),
        state: &state,
        events: &evs,
    };
    assert!(fast::complete_apply(&mut c, &snap, &w).unwrap());
    let step = db::steps::get(&mut c, &ids[0]).unwrap().unwrap();
    assert_eq!((step.status.as_str(), step.settled), ("SUCCEEDED", true));
    assert!(
        step.ended_at.unwrap() >= snap.now,
        "ended at the write's database time"
    );
    assert_eq!(step.completion_digest.as_deref(), Some("d"));
    assert!(db::leases::get(&mut c, &ids[0]).unwrap().is_none());
    let next = db::steps::get(&mut c, &queued.id).unwrap().expect("queued");
    assert_eq!(
        (next.phase.as_str(), next.status.as_str()),
        ("verification", "QUEUED")
    );
    let (_, st) = db::runs::lock_with_state(&mut c, &run.id).unwrap();
    assert_eq!((st.event_seq, st.iterations_done), (4, 1));
    let seqs: Vec<_> = events::for_run(&mut c, &run.id)
        .unwrap()
        .iter()
        .map(|e| (e.run_seq, e.event_type.clone()))
        .collect();
    assert_eq!(
        seqs[2..],
        [
            (Some(3), "STEP_FINISHED".into()),
            (Some(4), "STEP_QUEUED".into())
        ]
    );
    // The same completion again finds the lease gone and writes nothing.
    assert!(!fast::complete_apply(&mut c, &snap, &w).unwrap());
}

pub fn a_snapshot_that_moved_writes_nothing(s: Store) {
    let (run, ids) = seed(&s.db, "RUNNING", "", 1);
    let mut c = s.db.conn().unwrap();
    let g = claim(&mut c, "w", &[], 60_000).unwrap();
    let snap = fast::complete_snapshot(&mut c, &ids[0]).unwrap().unwrap();
    let (done, queued, state) = decided(&snap);
    let evs = two_events(&snap, &queued, state.event_seq);
    let w = |worker, epoch| Completion {
        worker_id: worker,
        epoch,
        done: &done,
        queued: Some(&queued),
        state: &state,
        events: &evs,
    };
    let unchanged = |c: &mut Conn| {
        let step = db::steps::get(c, &ids[0]).unwrap().unwrap();
        assert_eq!(step.status, "IN_PROGRESS");
        assert!(db::leases::get(c, &ids[0]).unwrap().is_some());
        assert!(db::steps::get(c, &queued.id).unwrap().is_none());
    };
    // Another worker, or an old epoch: not this lease.
    assert!(!fast::complete_apply(&mut c, &snap, &w("x", g.lease.epoch)).unwrap());
    assert!(!fast::complete_apply(&mut c, &snap, &w("w", g.lease.epoch + 1)).unwrap());
    unchanged(&mut c);
    // An event of the run appended since the snapshot: the state moved.
    let note = NewEvent {
        step_id: None,
        event_type: "NOTE",
        payload: json!({}),
    };
    events::append_many(&mut c, &run.id, &[note], snap.now).unwrap();
    assert!(!fast::complete_apply(&mut c, &snap, &w("w", g.lease.epoch)).unwrap());
    unchanged(&mut c);
    // The run paused since the snapshot (its row moved), with the state as read again.
    let snap = fast::complete_snapshot(&mut c, &ids[0]).unwrap().unwrap();
    let mut paused = snap.run.clone();
    paused.status = "PAUSED".into();
    db::runs::save(&mut c, &paused).unwrap();
    assert!(!fast::complete_apply(&mut c, &snap, &w("w", g.lease.epoch)).unwrap());
    unchanged(&mut c);
}
