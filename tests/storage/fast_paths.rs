//! The one-statement paths: a claim records its events like the transactional one did (both
//! backends), and a completion decided from a snapshot is written whole, or not at all when
//! anything moved since the snapshot, and with the next claim in the same statement when asked
//! (Postgres).

use super::{claim, seed, Store};
use loopd::db::batch;
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
pub(super) fn decided(snap: &Snapshot) -> (StepRow, StepRow, db::models::RunStateRow) {
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

pub(super) fn two_events(
    snap: &Snapshot,
    queued: &StepRow,
    last: i64,
) -> Vec<db::models::EventRow> {
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
    let rows = |s: &fast::Snapshot| {
        let (run, state) = (
            serde_json::to_value(&*s.run),
            serde_json::to_value(&s.state),
        );
        (s.run_version, s.state_version, run.unwrap(), state.unwrap())
    };
    assert_eq!(rows(&snap), rows(&fresh));
    assert_eq!(snap.inputs.attempts, fresh.inputs.attempts);
    assert_eq!(snap.step.prompt, None);
    let (done, queued, state) = decided(&snap);
    let evs = two_events(&snap, &queued, state.event_seq);
    let w = Completion {
        worker_id: "w",
        epoch: g.lease.epoch,
        done: &done,
        queued: Some(&queued),
        state: &state,
        events: &evs,
    };
    // Any update of the run's row, even of a note no decision reads, is a new version of it:
    // the write refuses the snapshot and writes nothing; one read afresh then writes.
    db::runs::set_waiting_reason(&mut c, &run.id, None, Some("waiting for a worker")).unwrap();
    assert!(!fast::complete_apply(&mut c, &snap, &w).unwrap());
    let unwritten = db::steps::get(&mut c, &ids[0]).unwrap().unwrap();
    assert_eq!(unwritten.status, "IN_PROGRESS");
    assert!(db::steps::get(&mut c, &queued.id).unwrap().is_none());
    let snap = fast::complete_snapshot(&mut c, &ids[0]).unwrap().unwrap();
    assert_ne!(snap.run_version, rows(&fresh).0, "the run's new version");
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
    let mut paused = (*snap.run).clone();
    paused.status = "PAUSED".into();
    db::runs::save(&mut c, &paused).unwrap();
    assert!(!fast::complete_apply(&mut c, &snap, &w("w", g.lease.epoch)).unwrap());
    unchanged(&mut c);
    // A run sent without its version is refused, not taken as unchanged.
    let snap = fast::complete_snapshot(&mut c, &ids[0]).unwrap().unwrap();
    assert!(!unversioned_apply(&mut c, &snap, &w("w", g.lease.epoch)));
    unchanged(&mut c);
}

/// `loopd_complete_apply` called with the run's id and status but no version (as a caller
/// that predates versions would): whether it wrote.
fn unversioned_apply(c: &mut Conn, snap: &Snapshot, w: &Completion<'_>) -> bool {
    use diesel::sql_types::{BigInt, Bool, Jsonb, Text};
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Applied {
        #[diesel(sql_type = Bool)]
        ok: bool,
    }
    let to = |v: serde_json::Result<Value>| v.unwrap();
    let run = json!({"id": snap.run.id, "status": snap.run.status});
    diesel::sql_query("SELECT loopd_complete_apply($1, $2, $3, $4, $5, $6, $7, $8, $9) AS ok")
        .bind::<Text, _>(&w.done.id)
        .bind::<Text, _>(w.worker_id)
        .bind::<BigInt, _>(w.epoch)
        .bind::<Jsonb, _>(run)
        .bind::<Jsonb, _>(json!({"version": snap.state_version}))
        .bind::<Jsonb, _>(to(serde_json::to_value(w.done)))
        .bind::<Jsonb, _>(to(serde_json::to_value(w.queued)))
        .bind::<Jsonb, _>(to(serde_json::to_value(w.state)))
        .bind::<Jsonb, _>(to(serde_json::to_value(w.events)))
        .get_result::<Applied>(super::batched::pg(c))
        .unwrap()
        .ok
}

pub fn a_completion_that_claims_takes_the_next_step_in_the_same_statement(s: Store) {
    let (run, ids) = seed(&s.db, "RUNNING", "", 1);
    let mut c = s.db.conn().unwrap();
    let g = claim(&mut c, "w", &[], 60_000).unwrap();
    // Another run's step, queued long before: the one this completion queues waits for this
    // worker, so it is taken first.
    let (_, other) = seed(&s.db, "RUNNING", "", 1);
    let snap = g.next.clone().expect("the claim's snapshot");
    let (done, mut queued, state) = decided(&snap);
    queued.preferred_worker_id = Some("w".into());
    let evs = two_events(&snap, &queued, state.event_seq);
    let w = |worker| Completion {
        worker_id: worker,
        epoch: g.lease.epoch,
        done: &done,
        queued: Some(&queued),
        state: &state,
        events: &evs,
    };
    let labels: Vec<String> = Vec::new();
    let queued_still = |c: &mut Conn, id: &str| {
        let s = db::steps::get(c, id).unwrap().unwrap();
        s.status == "QUEUED" && db::leases::get(c, id).unwrap().is_none()
    };
    // Not this worker's lease: nothing written, nothing claimed.
    let x = super::spec("x", &labels, 60_000);
    assert!(batch::complete_and_claim(&mut c, None, &snap, &w("x"), &x)
        .unwrap()
        .is_none());
    assert_eq!(
        db::steps::get(&mut c, &ids[0]).unwrap().unwrap().status,
        "IN_PROGRESS"
    );
    assert!(db::steps::get(&mut c, &queued.id).unwrap().is_none());
    assert!(queued_still(&mut c, &other[0]));

    let me = super::spec("w", &labels, 60_000);
    let got = batch::complete_and_claim(&mut c, None, &snap, &w("w"), &me).unwrap();
    let Some(fast::Claimed::Got(n)) = got else {
        panic!("nothing claimed: {got:?}");
    };
    assert_eq!(
        db::steps::get(&mut c, &ids[0]).unwrap().unwrap().status,
        "SUCCEEDED"
    );
    assert_eq!(
        (n.step.id.as_str(), n.step.status.as_str(), n.lease.epoch),
        (queued.id.as_str(), "IN_PROGRESS", 1)
    );
    assert_eq!(n.lease.worker_id, "w");
    assert_eq!(
        n.state.event_seq, 6,
        "the claim's events follow the completion's"
    );
    let next = n.next.as_ref().expect("the next completion's snapshot");
    assert_eq!(next.step.id, queued.id);
    claimed_after_completing(&mut c, &run.id);
    assert!(queued_still(&mut c, &other[0]));
}

/// The run's events after a claim, a completion and the claim made with it: numbered 1–6
/// without gaps, the second claim's after the completion's.
fn claimed_after_completing(c: &mut Conn, run_id: &str) {
    let got: Vec<_> = events::for_run(c, run_id)
        .unwrap()
        .into_iter()
        .map(|e| (e.run_seq, e.event_type))
        .collect();
    let types = [
        "LEASE_GRANTED",
        "STEP_STARTED",
        "STEP_FINISHED",
        "STEP_QUEUED",
    ];
    let want: Vec<_> = (types.iter().chain(&types[..2]).enumerate())
        .map(|(i, t)| (Some(i as i64 + 1), t.to_string()))
        .collect();
    assert_eq!(got, want);
}

/// The completion of `g` (queuing a verification for `prefers`), written with a claim for the
/// same worker: what was claimed, checked leased as a claim leases.
fn complete_claiming(c: &mut Conn, g: &fast::ClaimedStep, prefers: Option<&str>) -> StepRow {
    let worker = g.lease.worker_id.as_str();
    let snap = g.next.clone().expect("the claim's snapshot");
    let (done, mut queued, state) = decided(&snap);
    queued.preferred_worker_id = prefers.map(str::to_string);
    let evs = two_events(&snap, &queued, state.event_seq);
    let w = Completion {
        worker_id: worker,
        epoch: g.lease.epoch,
        done: &done,
        queued: Some(&queued),
        state: &state,
        events: &evs,
    };
    let labels: Vec<String> = Vec::new();
    let got = batch::complete_and_claim(c, None, &snap, &w, &super::spec(worker, &labels, 60_000));
    let Ok(Some(fast::Claimed::Got(n))) = got else {
        panic!("nothing claimed: {got:?}");
    };
    let row = db::steps::get(c, &n.step.id).unwrap().unwrap();
    let lease = db::leases::get(c, &n.step.id).unwrap().expect("its lease");
    assert_eq!(
        (
            row.status.as_str(),
            row.worker_id.as_deref(),
            row.lease_epoch
        ),
        ("IN_PROGRESS", Some(worker), 1)
    );
    assert_eq!(row.started_at, Some(n.now));
    assert!(row.queued_at <= n.now, "started before it was queued");
    assert_eq!(
        (lease.worker_id.as_str(), lease.epoch, lease.granted_at),
        (worker, 1, n.now)
    );
    assert_eq!(lease.expires_at, n.now + 60_000);
    row
}

pub fn a_completion_leases_the_step_it_queued_for_its_worker_before_older_ones(s: Store) {
    let (mine, _) = seed(&s.db, "RUNNING", "", 1);
    let (theirs, _) = seed(&s.db, "RUNNING", "", 1);
    let mut c = s.db.conn().unwrap();
    let first = claim(&mut c, "w", &[], 60_000).unwrap();
    let second = claim(&mut c, "w", &[], 60_000).unwrap();
    assert_eq!(first.run.id, mine.id);
    // Two steps of other runs queued long before, both waiting for this worker.
    let waiting: Vec<String> = (1..=2)
        .map(|at| {
            let (_, ids) = seed(&s.db, "RUNNING", "", 1);
            let mut row = db::steps::get(&mut c, &ids[0]).unwrap().unwrap();
            row.preferred_worker_id = Some("w".into());
            row.queued_at = at;
            db::steps::save(&mut c, &row).unwrap();
            ids[0].clone()
        })
        .collect();
    // A completion queuing its next step for no one in particular: the claim takes the
    // oldest waiting for this worker, and the queued one stays queued.
    let got = complete_claiming(&mut c, &first, None);
    assert_eq!(got.id, waiting[0]);
    let steps = db::steps::for_run(&mut c, &mine.id).unwrap();
    assert_eq!(steps.last().map(|q| q.status.as_str()), Some("QUEUED"));
    // Queued for this worker: that one, although another has waited for it longer.
    let got = complete_claiming(&mut c, &second, Some("w"));
    assert_eq!((got.run_id.as_str(), got.seq), (theirs.id.as_str(), 2));
    assert_eq!(Some(got.queued_at), got.started_at);
    claimed_after_completing(&mut c, &theirs.id);
    let still = db::steps::get(&mut c, &waiting[1]).unwrap().unwrap();
    assert_eq!(still.status, "QUEUED");
}
