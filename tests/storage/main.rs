//! The storage conformance suite: the same tests against SQLite (a real file) and Postgres (a
//! fresh database per test). Lease primitives must be atomic on both.

#[path = "../support/mod.rs"]
mod support;

use support::pg;

mod accounts;
mod batched;
mod direct;
mod fast_paths;
mod functions;
mod output;
mod races;
mod ticks;
mod upgrade;
use accounts::*;
use batched::*;
use direct::*;
use fast_paths::*;
use output::*;
use races::*;
use ticks::*;

use loopd::db::fast::{self, Claimed, ClaimedStep};
use loopd::db::leases::{self, ClaimSpec};
use loopd::db::models::{new_id, RunRow, StepRow};
use loopd::db::{self, Conn, Db, DbError};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// A database of either backend, kept alive with whatever it needs.
struct Store {
    db: Db,
    _keep: Box<dyn std::any::Any>,
}

fn sqlite() -> Store {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_sqlite(&dir.path().join("loopd.db"), 10).unwrap();
    Store {
        db,
        _keep: Box::new(dir),
    }
}

/// Connections in a test store's pool.
const POOL: usize = 10;

fn postgres() -> Store {
    let t = pg::TestDb::create();
    let db = Db::open_postgres(&t.url, POOL as u32, true).unwrap();
    Store {
        db,
        _keep: Box::new(t),
    }
}

/// Runs the named test body against both backends.
macro_rules! both {
    ($($name:ident),+ $(,)?) => {
        mod on_sqlite { $( #[test] fn $name() { super::$name(super::sqlite()) } )+ }
        mod on_postgres { $( #[test] fn $name() { super::$name(super::postgres()) } )+ }
    };
}

both!(
    eight_claimers_over_a_thousand_steps_claim_each_exactly_once,
    an_expired_lease_requeues_its_step_with_the_next_epoch,
    renewing_or_writing_with_an_old_epoch_is_rejected,
    claims_match_the_workers_labels,
    a_step_waits_for_its_preferred_worker_within_the_window,
    steps_of_paused_runs_are_not_claimed,
    a_step_that_keeps_losing_its_lease_fails_after_the_limit,
    a_released_lease_requeues_without_using_a_retry,
    events_of_a_run_are_numbered_in_order,
    offline_worker_leases_are_released_at_once,
    draining_or_revoked_workers_claim_nothing,
    a_release_that_waited_for_a_completion_leaves_the_step_completed,
    a_claim_records_lease_granted_and_step_started,
    a_lease_past_its_expiry_holds_until_the_sweep_takes_it,
    the_tick_finds_the_runs_whose_progress_stopped,
    the_tick_lists_the_first_waiting_step_of_each_running_run,
    output_appends_absorb_resends_refuse_gaps_and_read_across_chunks,
    racing_appends_of_one_step_store_each_byte_once,
    concurrent_claimers_take_an_accounts_steps_up_to_its_limit,
    a_halved_limit_and_a_usage_pause_hold_the_next_claims,
);

/// Runs the named test body against Postgres only.
macro_rules! postgres_only {
    ($($name:ident),+ $(,)?) => {
        mod on_postgres_only { $( #[test] fn $name() { super::$name(super::postgres()) } )+ }
    };
}

// The Postgres-only half of the completion path (SQLite always takes the transaction).
postgres_only!(
    completions_queued_together_are_written_in_one_statement_each_by_its_own_checks,
    completions_waiting_for_their_batch_hold_no_connection,
    completions_waiting_for_their_batch_hold_no_thread,
    a_completion_repeated_within_a_batch_is_written_once,
    a_failing_batch_writes_nothing_and_its_completions_are_written_alone,
    a_batch_whose_connection_is_lost_is_written_alone_on_a_fresh_one,
    a_completion_written_from_a_snapshot_changes_everything_at_once,
    a_snapshot_that_moved_writes_nothing,
    a_completion_that_claims_takes_the_next_step_in_the_same_statement,
    a_step_leased_by_its_completion_comes_with_the_snapshot_the_database_holds,
    a_completion_written_past_its_lease_expiry_before_any_sweep_applies,
    a_verifications_snapshot_carries_the_succeeded_implementations_when_read,
    a_completion_leases_the_step_it_queued_for_its_worker_before_older_ones,
);

fn run_row(status: &str, labels: &str) -> RunRow {
    RunRow {
        id: new_id(),
        name: "r".into(),
        name_source: "spec_slug".into(),
        status: status.into(),
        workspace_root: "/ws".into(),
        spec_path: "/ws/spec.md".into(),
        plan_path: None,
        worktree_json: None,
        worktree_cleanup_status: None,
        worktree_cleaned_at: None,
        config_json: None,
        created_at: 1,
        updated_at: 1,
        review_status: "pending".into(),
        review_action_at: None,
        pr_url: None,
        merge_commit: None,
        workspace_source: "shared_fs".into(),
        repo_url: None,
        repo_ref: None,
        artifact_store: "fs".into(),
        labels: labels.into(),
        waiting_reason: None,
        failure_reason: None,
        started_at: None,
        ended_at: None,
        pushed_branch: None,
        pushed_commit: None,
        run_branch: None,
    }
}

fn step_row(run: &RunRow, seq: i32, queued_at: i64) -> StepRow {
    StepRow {
        required_labels: run.labels.clone(),
        ..StepRow::new(&run.id, seq, "implementation", "QUEUED", queued_at)
    }
}

/// Inserts a run with `n` queued steps; returns the run and the step ids in queue order.
fn seed(db: &Db, status: &str, labels: &str, n: usize) -> (RunRow, Vec<String>) {
    let run = run_row(status, labels);
    let mut c = db.conn().unwrap();
    db::runs::insert_with_state(&mut c, &run).unwrap();
    let mut ids = Vec::new();
    for i in 0..n {
        let s = step_row(&run, i as i32 + 1, i as i64);
        db::steps::insert(&mut c, &s).unwrap();
        ids.push(s.id);
    }
    (run, ids)
}

fn spec<'a>(worker: &'a str, labels: &'a [String], ttl: i64) -> ClaimSpec<'a> {
    ClaimSpec {
        worker_id: worker,
        labels,
        ttl_ms: ttl,
        affinity_window_ms: 60_000,
    }
}

/// A claim as the LeaseActor takes it (on Postgres the one-statement function).
fn claim(c: &mut Conn, worker: &str, labels: &[String], ttl: i64) -> Option<ClaimedStep> {
    match fast::claim(c, &spec(worker, labels, ttl)).unwrap() {
        Claimed::Got(g) => Some(*g),
        Claimed::Empty | Claimed::Closed => None,
    }
}

/// Expires every lease due by the database's clock now (three lost leases fail a step).
fn expire_due(c: &mut Conn) -> Result<Vec<leases::Requeued>, DbError> {
    let now = c.now_ms()?;
    leases::expire_due(c, 3, now)
}

fn eight_claimers_over_a_thousand_steps_claim_each_exactly_once(s: Store) {
    let (_, ids) = seed(&s.db, "RUNNING", "", 1000);
    let claimed = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..8)
        .map(|w| {
            let (db, claimed) = (s.db.clone(), claimed.clone());
            std::thread::spawn(move || {
                let mut c = db.conn().unwrap();
                let me = format!("w{w}");
                while let Some(g) = claim(&mut c, &me, &[], 60_000) {
                    claimed.lock().unwrap().push(g.step.id);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let got = claimed.lock().unwrap().clone();
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(got.len(), 1000, "every step claimed once, none twice");
    assert_eq!(unique.len(), 1000);
    assert_eq!(unique, ids.iter().collect::<HashSet<_>>());
}

fn an_expired_lease_requeues_its_step_with_the_next_epoch(s: Store) {
    let (_, ids) = seed(&s.db, "RUNNING", "", 1);
    let mut c = s.db.conn().unwrap();
    let g = claim(&mut c, "a", &[], 0).expect("claimed");
    assert_eq!(g.lease.epoch, 1);
    assert_eq!(g.step.status, "IN_PROGRESS");
    let expired = c.write_tx(expire_due).unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].step_id, ids[0]);
    assert!(!expired[0].failed);
    let step = db::steps::get(&mut c, &ids[0]).unwrap().unwrap();
    assert_eq!(step.status, "RETRYING");
    assert_eq!(step.infra_attempts, 1);
    assert_eq!(
        step.attempt, 1,
        "a lost lease does not use the step's own attempts"
    );
    let again = claim(&mut c, "b", &[], 60_000).expect("claimed again");
    assert_eq!(again.step.id, ids[0]);
    assert_eq!(again.lease.epoch, 2);
}

fn renewing_or_writing_with_an_old_epoch_is_rejected(s: Store) {
    let (_, ids) = seed(&s.db, "RUNNING", "", 1);
    let mut c = s.db.conn().unwrap();
    claim(&mut c, "a", &[], 0).unwrap();
    c.write_tx(expire_due).unwrap();
    claim(&mut c, "b", &[], 60_000).unwrap();
    let id = &ids[0];
    let renew_old = c.write_tx(|c| leases::renew(c, id, "a", 1, 60_000));
    assert!(
        matches!(renew_old, Err(DbError::StaleLease)),
        "{renew_old:?}"
    );
    assert!(matches!(
        leases::check(&mut c, id, "a", 1),
        Err(DbError::StaleLease)
    ));
    assert!(matches!(
        leases::check(&mut c, id, "b", 1),
        Err(DbError::StaleLease)
    ));
    let renewed = c
        .write_tx(|c| leases::renew(c, id, "b", 2, 60_000))
        .unwrap();
    assert_eq!(renewed.epoch, 2);
    assert!(leases::check(&mut c, id, "b", 2).is_ok());
}

fn claims_match_the_workers_labels(s: Store) {
    let (_, gpu) = seed(&s.db, "RUNNING", "gpu", 1);
    let (_, plain) = seed(&s.db, "RUNNING", "", 1);
    let mut c = s.db.conn().unwrap();
    let g = claim(&mut c, "cpu-worker", &["linux".into()], 60_000).unwrap();
    assert_eq!(g.step.id, plain[0]);
    assert!(
        claim(&mut c, "cpu-worker", &["linux".into()], 60_000).is_none(),
        "the gpu step is not for it"
    );
    let g = claim(
        &mut c,
        "gpu-worker",
        &["gpu".into(), "linux".into()],
        60_000,
    )
    .unwrap();
    assert_eq!(g.step.id, gpu[0]);
}

fn a_step_waits_for_its_preferred_worker_within_the_window(s: Store) {
    let (run, _) = seed(&s.db, "RUNNING", "", 0);
    let mut c = s.db.conn().unwrap();
    let now = c.now_ms().unwrap();
    let mut step = step_row(&run, 1, now);
    step.preferred_worker_id = Some("home".into());
    db::steps::insert(&mut c, &step).unwrap();
    assert!(
        claim(&mut c, "other", &[], 60_000).is_none(),
        "left to its worker within the window"
    );
    let mut late = step_row(&run, 2, now - 120_000);
    late.preferred_worker_id = Some("gone".into());
    db::steps::insert(&mut c, &late).unwrap();
    let g = claim(&mut c, "other", &[], 60_000).unwrap();
    assert_eq!(g.step.id, late.id, "after the window anyone may take it");
    let g = claim(&mut c, "home", &[], 60_000).unwrap();
    assert_eq!(g.step.id, step.id);
}

fn steps_of_paused_runs_are_not_claimed(s: Store) {
    let (mut run, _) = seed(&s.db, "PAUSED", "", 2);
    let mut c = s.db.conn().unwrap();
    assert!(claim(&mut c, "a", &[], 60_000).is_none());
    run.status = "RUNNING".into();
    db::runs::save(&mut c, &run).unwrap();
    assert!(claim(&mut c, "a", &[], 60_000).is_some());
}

fn a_step_that_keeps_losing_its_lease_fails_after_the_limit(s: Store) {
    let (_, ids) = seed(&s.db, "RUNNING", "", 1);
    let mut c = s.db.conn().unwrap();
    for round in 1..=3 {
        claim(&mut c, "flaky", &[], 0).expect("claimable while retries remain");
        let r = c.write_tx(expire_due).unwrap();
        assert_eq!(r[0].failed, round == 3, "round {round}");
    }
    let step = db::steps::get(&mut c, &ids[0]).unwrap().unwrap();
    assert_eq!(step.status, "FAILED");
    assert!(step
        .failure_reason
        .unwrap()
        .contains("lost its lease 3 times"));
    assert!(claim(&mut c, "other", &[], 60_000).is_none());
}

fn a_released_lease_requeues_without_using_a_retry(s: Store) {
    let (_, ids) = seed(&s.db, "RUNNING", "", 1);
    let mut c = s.db.conn().unwrap();
    claim(&mut c, "a", &[], 60_000).unwrap();
    let r = c
        .write_tx(|c| leases::release(c, &ids[0], "a", 1, None))
        .unwrap();
    assert_eq!(r.infra_attempts, 0);
    let step = db::steps::get(&mut c, &ids[0]).unwrap().unwrap();
    assert_eq!(step.status, "RETRYING");
    let g = claim(&mut c, "b", &[], 60_000).unwrap();
    assert_eq!(g.lease.epoch, 2);
    let wrong = c.write_tx(|c| leases::release(c, &ids[0], "a", 1, None));
    assert!(matches!(wrong, Err(DbError::StaleLease)));
}

fn events_of_a_run_are_numbered_in_order(s: Store) {
    let (run, _) = seed(&s.db, "RUNNING", "", 0);
    let mut c = s.db.conn().unwrap();
    for i in 0..5 {
        let payload = serde_json::json!({ "i": i });
        c.write_tx(|c| db::events::append(c, Some(&run.id), None, "X", &payload, 42))
            .unwrap();
    }
    let batch: Vec<_> = (0..3)
        .map(|i| db::events::NewEvent {
            step_id: None,
            event_type: "Y",
            payload: serde_json::json!({ "j": i }),
        })
        .collect();
    c.write_tx(|c| db::events::append_many(c, &run.id, &batch, 43))
        .unwrap();
    let all = db::events::for_run(&mut c, &run.id).unwrap();
    let seqs: Vec<i64> = all.iter().map(|e| e.run_seq.unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=8).collect::<Vec<_>>(),
        "consecutive, even two in one millisecond"
    );
    let after = db::events::after(&mut c, &run.id, 5, None, 100).unwrap();
    assert_eq!(after.len(), 3);
    assert_eq!(after[0].event_type, "Y");
}

fn offline_worker_leases_are_released_at_once(s: Store) {
    let (_, ids) = seed(&s.db, "RUNNING", "", 2);
    let mut c = s.db.conn().unwrap();
    claim(&mut c, "dead", &[], 600_000).unwrap();
    claim(&mut c, "alive", &[], 600_000).unwrap();
    let released = c
        .write_tx(|c| leases::release_all_of_worker(c, "dead", 3))
        .unwrap();
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].worker_id, "dead");
    let alive_leases = leases::of_worker(&mut c, "alive").unwrap();
    assert_eq!(alive_leases.len(), 1, "other workers keep theirs");
    let requeued = db::steps::get(&mut c, &released[0].step_id)
        .unwrap()
        .unwrap();
    assert_eq!(requeued.status, "RETRYING");
    assert!(ids.contains(&requeued.id));
}
