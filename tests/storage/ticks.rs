//! Conformance tests for the scheduler tick's queries, which read every run at once: the runs
//! whose progress stopped between two transactions, and the steps waiting in RUNNING runs.

use super::{run_row, step_row, Store};
use loopd::db::{self, Conn};
use loopd::domain::RunStatus;

/// A run in `status` with steps of these (status, settled, required labels); returns its id.
fn run_with(c: &mut Conn, status: &str, steps: &[(&str, bool, &str)]) -> String {
    let run = run_row(status, "");
    db::runs::insert_with_state(c, &run).unwrap();
    for (i, (st, settled, labels)) in steps.iter().enumerate() {
        let mut s = step_row(&run, i as i32 + 1, i as i64);
        s.status = st.to_string();
        s.settled = *settled;
        s.required_labels = labels.to_string();
        db::steps::insert(c, &s).unwrap();
    }
    run.id
}

pub fn the_tick_finds_the_runs_whose_progress_stopped(s: Store) {
    let mut c = s.db.conn().unwrap();
    let no_step = run_with(&mut c, "RUNNING", &[]);
    let unsettled = run_with(
        &mut c,
        "RUNNING",
        &[("SUCCEEDED", true, ""), ("FAILED", false, "")],
    );
    let finishing = run_with(&mut c, "PAUSED", &[("SUCCEEDED", true, "")]);
    let mut state = db::runs::state(&mut c, &finishing).unwrap();
    state.finishing = Some("{\"completed\":true}".into());
    db::runs::save_state(&mut c, &state).unwrap();
    // Not stuck: a step in flight or queued last, a settled last step, a run that ended.
    run_with(
        &mut c,
        "RUNNING",
        &[("SUCCEEDED", true, ""), ("IN_PROGRESS", false, "")],
    );
    run_with(
        &mut c,
        "RUNNING",
        &[("SUCCEEDED", false, ""), ("QUEUED", false, "")],
    );
    run_with(&mut c, "PAUSED", &[("FAILED", true, "")]);
    run_with(&mut c, "COMPLETED", &[("FAILED", false, "")]);

    let mut got = db::runs::stuck(&mut c).unwrap();
    got.sort();
    let mut want = vec![no_step, unsettled, finishing];
    want.sort();
    assert_eq!(got, want);
}

pub fn the_tick_lists_the_first_waiting_step_of_each_running_run(s: Store) {
    let mut c = s.db.conn().unwrap();
    let a = run_with(
        &mut c,
        "RUNNING",
        &[
            ("SUCCEEDED", true, ""),
            ("RETRYING", false, "gpu"),
            ("QUEUED", false, "arm"),
        ],
    );
    run_with(&mut c, "PAUSED", &[("QUEUED", false, "")]);
    run_with(&mut c, "RUNNING", &[("IN_PROGRESS", false, "")]);
    let got = db::steps::waiting_of_running(&mut c).unwrap();
    assert_eq!(
        got,
        [(a.clone(), "gpu".to_string()), (a, "arm".to_string())],
        "in queue order, RUNNING runs only"
    );
    let reasons = db::runs::reasons_with_status(&mut c, RunStatus::Running).unwrap();
    assert_eq!(reasons.len(), 2);
    assert!(reasons.iter().all(|(_, r)| r.is_none()));
}
