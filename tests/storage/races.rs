//! Conformance tests about workers' status and lease writes that race each other.

use super::{claim, expire_due, seed, Store};
use loopd::db::leases;
use loopd::db::models::WorkerRow;
use loopd::db::{self, Conn};

fn worker_row(id: &str, status: &str) -> WorkerRow {
    WorkerRow {
        id: id.into(),
        hostname: "h".into(),
        token_hash: "x".into(),
        instance_id: None,
        labels: String::new(),
        slots: 1,
        version: "t".into(),
        status: status.into(),
        registered_at: 0,
        last_heartbeat_at: 0,
        metrics_json: None,
    }
}

pub fn draining_or_revoked_workers_claim_nothing(s: Store) {
    let (_, ids) = seed(&s.db, "RUNNING", "", 1);
    let mut c = s.db.conn().unwrap();
    for (id, status) in [("d", "draining"), ("r", "revoked"), ("o", "online")] {
        db::workers::insert(&mut c, &worker_row(id, status)).unwrap();
    }
    assert!(claim(&mut c, "d", &[], 60_000).is_none());
    assert!(claim(&mut c, "r", &[], 60_000).is_none());
    let g = claim(&mut c, "o", &[], 60_000).expect("an online worker claims");
    assert_eq!(g.step.id, ids[0]);
}

/// A completion holds the lease row; a release of the same worker's leases (it went offline)
/// that read the lease before the completion committed must not requeue the finished step.
pub fn a_release_that_waited_for_a_completion_leaves_the_step_completed(s: Store) {
    let (_, ids) = seed(&s.db, "RUNNING", "", 1);
    let mut c = s.db.conn().unwrap();
    let g = claim(&mut c, "w", &[], 600_000).unwrap();
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let db2 = s.db.clone();
    let completer = std::thread::spawn(move || {
        let mut c = db2.conn().unwrap();
        c.write_tx(|c| {
            let held = leases::check_held(c, &g.step.id, "w", g.lease.epoch)?;
            locked_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            let mut step = held.step;
            step.status = "SUCCEEDED".into();
            step.ended_at = Some(held.now_ms);
            db::steps::save(c, &step)?;
            leases::delete(c, &step.id)
        })
        .unwrap();
    });
    locked_rx.recv().unwrap();
    let db3 = s.db.clone();
    let releaser = std::thread::spawn(move || {
        let mut c = db3.conn().unwrap();
        c.write_tx(|c| leases::release_all_of_worker(c, "w", 3))
            .unwrap()
    });
    // Postgres: let the completion commit only once the release waits for the lease row (on
    // SQLite the release waits for the write lock before it reads anything).
    if s.db.backend() == db::Backend::Postgres {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !waiting_on_a_lock(&mut c) {
            assert!(
                std::time::Instant::now() < deadline,
                "the release never waited for the lease row"
            );
            std::thread::yield_now();
        }
    }
    go_tx.send(()).unwrap();
    completer.join().unwrap();
    let released = releaser.join().unwrap();
    assert!(released.is_empty(), "nothing left to release: {released:?}");
    let step = db::steps::get(&mut c, &ids[0]).unwrap().unwrap();
    assert_eq!(step.status, "SUCCEEDED");
}

/// Whether some session of this database waits for a row lock.
fn waiting_on_a_lock(c: &mut Conn) -> bool {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let Conn::Pg(pg) = c else { return false };
    let q = "SELECT count(*) AS n FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'";
    diesel::sql_query(q)
        .get_result::<N>(&mut **pg)
        .map(|r| r.n > 0)
        .unwrap_or(false)
}

/// Only the expiry sweep ends a lease by time: until it has looked, a lease past its expiry is
/// still its worker's (a controller that was itself paused must not refuse its workers'
/// renewals and writes the moment it runs again, and gives every lease a fresh period when it
/// notices its pause); once the sweep took it, it is stale.
pub fn a_lease_past_its_expiry_holds_until_the_sweep_takes_it(s: Store) {
    let (_, ids) = seed(&s.db, "RUNNING", "", 1);
    let mut c = s.db.conn().unwrap();
    let id = &ids[0];
    claim(&mut c, "a", &[], 0).expect("claimed, expiring at once");
    leases::check(&mut c, id, "a", 1).expect("held past its expiry");
    let renewed = c
        .write_tx(|c| leases::renew(c, id, "a", 1, 60_000))
        .expect("renewed past its expiry");
    let now = c.now_ms().unwrap();
    assert!(renewed.expires_at > now + 50_000, "{renewed:?}");
    assert!(c.write_tx(expire_due).unwrap().is_empty());

    c.write_tx(|c| leases::renew(c, id, "a", 1, 0)).unwrap();
    let extended = c.write_tx(|c| {
        let now = c.now_ms()?;
        leases::extend_all(c, now, 60_000)
    });
    assert_eq!(extended.unwrap(), 1, "the paused sweep's fresh period");
    assert!(c.write_tx(expire_due).unwrap().is_empty());

    c.write_tx(|c| leases::renew(c, id, "a", 1, 0)).unwrap();
    assert_eq!(c.write_tx(expire_due).unwrap().len(), 1);
    let stale = c.write_tx(|c| leases::renew(c, id, "a", 1, 60_000));
    assert!(matches!(stale, Err(db::DbError::StaleLease)), "{stale:?}");
    assert!(matches!(
        leases::check(&mut c, id, "a", 1),
        Err(db::DbError::StaleLease)
    ));
}
