//! Agent accounts on both backends: claims give out an account's steps up to its limit and no
//! further, even with many claimers at once (Postgres: the account's row taken in turn), steps
//! of no account or of another are not held by it, a halved limit holds the next claims, and a
//! usage-limit pause holds every step of the account.

use super::{claim, run_row, step_row, Store};
use loopd::db::{self, accounts, leases};
use loopd::domain::api_limit::ApiFailure;
use std::sync::{Arc, Mutex};

/// A RUNNING run with `n` queued implementation steps of `account`; their ids.
fn seed_account(s: &Store, account: Option<&str>, n: usize) -> Vec<String> {
    let run = run_row("RUNNING", "");
    let mut c = s.db.conn().unwrap();
    db::runs::insert_with_state(&mut c, &run).unwrap();
    (0..n)
        .map(|i| {
            let st = loopd::db::models::StepRow {
                account: account.map(str::to_string),
                ..step_row(&run, i as i32 + 1, i as i64)
            };
            db::steps::insert(&mut c, &st).unwrap();
            st.id
        })
        .collect()
}

pub fn concurrent_claimers_take_an_accounts_steps_up_to_its_limit(s: Store) {
    let held = seed_account(&s, Some("acct"), 40);
    let free = seed_account(&s, None, 5);
    let other = seed_account(&s, Some("other"), 2);
    {
        let mut c = s.db.conn().unwrap();
        accounts::ensure(&mut c, "acct", 3, 0).unwrap();
        accounts::ensure(&mut c, "other", 3, 0).unwrap();
    }
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
    let claimed = claimed.lock().unwrap().clone();
    let count = |ids: &[String]| claimed.iter().filter(|c| ids.contains(c)).count();
    assert_eq!(count(&held), 3, "the account's limit");
    assert_eq!(count(&free), 5, "steps of no account are not held");
    assert_eq!(count(&other), 2, "another account has slots of its own");
    let mut c = s.db.conn().unwrap();
    let used = accounts::in_use(&mut c).unwrap();
    assert_eq!(used.get("acct"), Some(&3));
    let now = c.now_ms().unwrap();
    assert_eq!(accounts::blocked(&mut c, now).unwrap(), vec!["acct"]);
}

pub fn a_halved_limit_and_a_usage_pause_hold_the_next_claims(s: Store) {
    let ids = seed_account(&s, Some("acct"), 10);
    let mut c = s.db.conn().unwrap();
    accounts::ensure(&mut c, "acct", 4, 0).unwrap();
    let mut got: Vec<_> = (0..4)
        .map(|i| claim(&mut c, &format!("w{i}"), &[], 60_000).expect("a slot"))
        .collect();
    assert!(claim(&mut c, "w9", &[], 60_000).is_none(), "four of four");
    // A 429 on one of them: four becomes two; the wave's other signals change nothing. (No
    // pause here, so that the halved limit alone is what holds the claims below.)
    for g in &got[..2] {
        let granted = g.lease.granted_at;
        c.write_tx(|c| accounts::signal(c, "acct", ApiFailure::RateLimited, granted, 0, 4))
            .unwrap();
    }
    let state = accounts::list(&mut c).unwrap().remove(0);
    assert_eq!((state.state.limit, state.in_use), (2, 4));
    // Three of the four handed back: one runs, so one more goes out, not three.
    for g in got.drain(..3) {
        c.write_tx(|c| leases::release(c, &g.step.id, &g.lease.worker_id, g.lease.epoch, None))
            .unwrap();
    }
    assert!(claim(&mut c, "w5", &[], 60_000).is_some());
    assert!(claim(&mut c, "w6", &[], 60_000).is_none(), "two of two");
    // A usage limit: nothing of the account goes out until its reset, whatever is free.
    c.write_tx(|c| {
        accounts::signal(
            c,
            "acct",
            ApiFailure::UsageLimit { resets_at_ms: None },
            0,
            60_000,
            4,
        )
    })
    .unwrap();
    for l in leases::all(&mut c).unwrap() {
        c.write_tx(|c| leases::release(c, &l.step_id, &l.worker_id, l.epoch, None))
            .unwrap();
    }
    assert!(claim(&mut c, "w7", &[], 60_000).is_none(), "paused");
    assert_eq!(ids.len(), 10);
}
