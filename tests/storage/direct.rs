//! A step leased by the completion that queued it comes back without being read (Postgres):
//! the snapshot its own completion will decide from is built from what was written, and must be
//! what the database would give, or every such completion would take the slower path. And what
//! the snapshots carry for the watchdog.

use super::fast_paths::{decided, two_events};
use super::{claim, seed, spec, Store};
use loopd::db::batch;
use loopd::db::fast::{self, Claimed, ClaimedStep, Completion, Snapshot};
use loopd::db::models::{ImplStep, StepRow};
use loopd::domain::time::rfc3339;
use serde_json::{json, Value};

/// What a completion's write checks and its decision reads, as comparable JSON.
pub(super) fn held(s: &Snapshot) -> Value {
    json!({
        "step": s.step, "lease": s.lease, "run": *s.run, "state": s.state,
        "run_version": s.run_version, "state_version": s.state_version,
        "others_active": s.inputs.others_active, "attempts": s.inputs.attempts,
        "recent": s.inputs.recent_impls, "succeeded": s.inputs.succeeded_impls,
    })
}

pub fn a_step_leased_by_its_completion_comes_with_the_snapshot_the_database_holds(s: Store) {
    let (run, _) = seed(&s.db, "RUNNING", "", 1);
    let mut c = s.db.conn().unwrap();
    let g = claim(&mut c, "w", &[], 60_000).unwrap();
    let (mut snap, mut epoch) = (g.next.clone().expect("the claim's snapshot"), g.lease.epoch);
    let labels: Vec<String> = Vec::new();
    // A verification that is not final (the database adds the watchdog's inputs), then an
    // implementation (its inputs follow from the verification's).
    for phase in ["verification", "implementation"] {
        let (done, mut queued, state) = decided(&snap);
        queued.phase = phase.into();
        queued.attempt = snap.inputs.attempts.get(phase).map_or(1, |a| a + 1);
        queued.preferred_worker_id = Some("w".into());
        queued.prompt = Some(format!("{phase} prompt"));
        let evs = two_events(&snap, &queued, state.event_seq);
        let w = Completion {
            worker_id: "w",
            epoch,
            done: &done,
            queued: Some(&queued),
            state: &state,
            events: &evs,
        };
        let got = batch::complete_and_claim(&mut c, None, &snap, &w, &spec("w", &labels, 60_000));
        let Ok(Some(Claimed::Got(n))) = got else {
            panic!("{phase}: not leased directly: {got:?}");
        };
        assert_eq!(n.step.prompt, queued.prompt, "the worker gets the prompt");
        let built = n.next.clone().expect("the completion's snapshot");
        assert_eq!(built.step.prompt, None, "the snapshot does not keep it");
        let read = fast::complete_snapshot(&mut c, &n.step.id)
            .unwrap()
            .unwrap();
        assert_eq!(held(&built), held(&read), "after queuing a {phase}");
        assert_eq!(n.state.event_seq, read.state.event_seq);
        (snap, epoch) = (built, n.lease.epoch);
    }
    // And the write checked against the built snapshot applies.
    let (done, queued, state) = decided(&snap);
    let evs = two_events(&snap, &queued, state.event_seq);
    let w = Completion {
        worker_id: "w",
        epoch,
        done: &done,
        queued: Some(&queued),
        state: &state,
        events: &evs,
    };
    assert!(fast::complete_apply(&mut c, &snap, &w).unwrap());
    let last = loopd::db::steps::for_run(&mut c, &run.id).unwrap();
    assert_eq!(
        last.iter().map(|r| r.status.as_str()).collect::<Vec<_>>(),
        ["SUCCEEDED", "SUCCEEDED", "SUCCEEDED", "QUEUED"]
    );
}

/// The write from a snapshot holds a lease past its expiry that no sweep has taken back, as
/// the transactional path does (a paused controller's workers keep their steps).
pub fn a_completion_written_past_its_lease_expiry_before_any_sweep_applies(s: Store) {
    let (_, ids) = seed(&s.db, "RUNNING", "", 1);
    let mut c = s.db.conn().unwrap();
    let g = claim(&mut c, "w", &[], 1).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let snap = loop {
        let snap = fast::complete_snapshot(&mut c, &ids[0]).unwrap().unwrap();
        if snap.now > g.lease.expires_at {
            break snap;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the database clock stands still"
        );
        std::thread::yield_now();
    };
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
    assert!(fast::complete_apply(&mut c, &snap, &w).unwrap());
    let step = loopd::db::steps::get(&mut c, &ids[0]).unwrap().unwrap();
    assert_eq!(step.status, "SUCCEEDED");
}

/// The watchdog's list of succeeded implementations comes with a verification's snapshot
/// exactly when its decision reads it: fewer than two of the three newest succeeded.
pub fn a_verifications_snapshot_carries_the_succeeded_implementations_when_read(s: Store) {
    let (run, ids) = seed(&s.db, "RUNNING", "", 3);
    let mut c = s.db.conn().unwrap();
    // Each with its own prompt and output (the seeded steps have neither).
    let set = |c: &mut loopd::db::Conn, id: &str, status: &str| {
        let mut row = loopd::db::steps::get(c, id).unwrap().unwrap();
        row.status = status.into();
        (row.prompt, row.output_tail) = (Some(format!("of {id}")), Some(format!("of {id}")));
        loopd::db::steps::save(c, &row).unwrap();
    };
    set(&mut c, &ids[0], "SUCCEEDED");
    set(&mut c, &ids[1], "FAILED");
    set(&mut c, &ids[2], "FAILED");
    let verification = StepRow::new(&run.id, 4, "verification", "QUEUED", 1);
    loopd::db::steps::insert(&mut c, &verification).unwrap();
    let g = claim(&mut c, "w", &[], 60_000).expect("the verification");
    assert_eq!(g.step.id, verification.id);
    let list = |l: &[ImplStep]| -> Vec<String> { l.iter().map(|r| r.id.clone()).collect() };
    let inputs = &g.next.as_ref().expect("its snapshot").inputs;
    let newest: Vec<String> = ids[..3].iter().rev().cloned().collect();
    assert_eq!(list(&inputs.recent_impls), newest);
    assert_eq!(list(&inputs.succeeded_impls), vec![ids[0].clone()]);
    let want = loopd::db::steps::succeeded_implementations(&mut c, &run.id).unwrap();
    assert_eq!(list(&inputs.succeeded_impls), list(&want));
    // The newest alone comes with its prompt (the one a rewrite starts from); every step with
    // its output.
    let prompts: Vec<_> = (inputs.recent_impls.iter().chain(&inputs.succeeded_impls))
        .map(|r| r.prompt.clone())
        .collect();
    assert_eq!(prompts, [Some(format!("of {}", ids[2])), None, None, None]);
    for r in inputs.recent_impls.iter().chain(&inputs.succeeded_impls) {
        assert_eq!(r.output_tail, Some(format!("of {}", r.id)));
    }
    // Two of the three succeeded: the decision does not read the list, so it is not sent.
    set(&mut c, &ids[1], "SUCCEEDED");
    let read = fast::complete_snapshot(&mut c, &verification.id)
        .unwrap()
        .unwrap();
    assert_eq!(list(&read.inputs.recent_impls), newest);
    assert!(read.inputs.succeeded_impls.is_empty());
}

/// What a completion that leased its worker the next step wrote: the snapshot the controller
/// built from its answer is the one the database holds, and the run's events end with the
/// completion's two and the lease's two, numbered in a row, with the lone path's payloads.
pub(super) fn written_as_alone(s: &Store, n: &ClaimedStep) {
    let mut c = s.db.conn().unwrap();
    let steps = loopd::db::steps::for_run(&mut c, &n.run.id).unwrap();
    let f = &steps[0];
    assert_eq!(
        (&f.output_tail, &f.runner_notes, &f.output_path),
        (
            &Some(format!("tail of {}", f.id)),
            &Some(format!("notes of {}", f.id)),
            &Some(format!("{}.log", f.id))
        )
    );
    assert_eq!(
        (f.exit_code, f.completion_detected, f.settled, f.ended_at),
        (Some(0), Some(true), true, Some(n.lease.granted_at))
    );
    assert_eq!(f.completion_digest.as_deref(), Some("d"));
    let built = n.next.as_ref().expect("the completion's snapshot");
    let read = fast::complete_snapshot(&mut c, &n.step.id)
        .unwrap()
        .unwrap();
    assert_eq!(held(built), held(&read));
    let events = loopd::db::events::for_run(&mut c, &n.run.id).unwrap();
    let seqs: Vec<i64> = events.iter().filter_map(|e| e.run_seq).collect();
    assert_eq!(seqs, (1..=events.len() as i64).collect::<Vec<_>>());
    assert_eq!(seqs.last(), Some(&n.state.event_seq));
    let last: Vec<(&str, Value)> = events[events.len() - 4..]
        .iter()
        .map(|e| {
            let payload = serde_json::from_str(&e.payload_json).unwrap();
            (e.event_type.as_str(), payload)
        })
        .collect();
    let (worker, epoch) = (&n.lease.worker_id, n.lease.epoch);
    assert_eq!(last[0].0, "STEP_FINISHED");
    assert_eq!(last[1].0, "STEP_QUEUED");
    assert_eq!(
        last[2..],
        [
            (
                "LEASE_GRANTED",
                json!({"step_id": n.step.id, "worker_id": worker, "epoch": epoch,
                       "expires_at": rfc3339(n.lease.expires_at)})
            ),
            (
                "STEP_STARTED",
                json!({"step_id": n.step.id, "phase": n.step.phase, "attempt": n.step.attempt,
                       "worker_id": worker, "epoch": epoch})
            ),
        ]
    );
}
