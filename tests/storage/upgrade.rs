//! Upgrading a database whose workers hold leases: the migration that moved a lease from a
//! table of its own into its step (`*_leases_in_steps`) keeps every live lease, on both
//! backends, and the `leases` view that replaces the table takes no writes.

use super::{run_row, step_row};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use loopd::db::models::{LeaseRow, StepRow};
use loopd::db::schema::{runs, steps};
use loopd::db::{leases, Db, DbError};

const SQLITE: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES: EmbeddedMigrations = embed_migrations!("migrations/postgres");
/// The migration under test: everything before it is the old schema.
const MOVE: &str = "leases_in_steps";

/// Runs the migrations of `src` (a backend's tree) older than [`MOVE`].
fn migrate_to_before_move<C, D>(c: &mut C, src: fn() -> EmbeddedMigrations)
where
    D: diesel::backend::Backend,
    C: MigrationHarness<D>,
{
    let pending = c.pending_migrations(src()).unwrap();
    let old = pending
        .iter()
        .take_while(|m| !m.name().to_string().contains(MOVE));
    for m in old {
        c.run_migration(m.as_ref()).unwrap();
    }
    assert!(
        c.has_pending_migration(src()).unwrap(),
        "the migration {MOVE} exists"
    );
}

/// A step inserted into the old schema, which lacks the columns later migrations add.
trait OldStep {
    fn insert_old_step(&mut self, s: &StepRow);
}

impl OldStep for SqliteConnection {
    fn insert_old_step(&mut self, s: &StepRow) {
        // diesel leaves a single row's `None` columns out of its INSERT on SQLite.
        diesel::insert_into(steps::table)
            .values(s)
            .execute(self)
            .unwrap();
    }
}

impl OldStep for PgConnection {
    fn insert_old_step(&mut self, s: &StepRow) {
        // The row's JSON, whose keys the old table lacks are ignored.
        let json = serde_json::to_string(s).unwrap().replace('\'', "''");
        self.batch_execute(&format!(
            "INSERT INTO steps SELECT * FROM jsonb_populate_record(NULL::steps, '{json}')"
        ))
        .unwrap();
    }
}

/// A RUNNING run with step "s" IN_PROGRESS at epoch 3 under worker "w" whose lease row (the
/// old table) expires at `$expires`, and a finished step without a lease; returns the lease.
/// (A macro: the same statements on either backend's connection.)
macro_rules! seed_old {
    ($c:expr, $expires:expr) => {{
        let c = $c;
        let run = run_row("RUNNING", "");
        // The old schema's columns only (later migrations add more).
        diesel::insert_into(runs::table)
            .values((
                runs::id.eq(&run.id),
                runs::name.eq(&run.name),
                runs::name_source.eq(&run.name_source),
                runs::status.eq(&run.status),
                runs::workspace_root.eq(&run.workspace_root),
                runs::spec_path.eq(&run.spec_path),
                runs::created_at.eq(run.created_at),
                runs::updated_at.eq(run.updated_at),
                runs::review_status.eq(&run.review_status),
                runs::workspace_source.eq(&run.workspace_source),
                runs::artifact_store.eq(&run.artifact_store),
                runs::labels.eq(&run.labels),
            ))
            .execute(c)
            .unwrap();
        let state = format!("INSERT INTO run_state (run_id) VALUES ('{}')", run.id);
        c.batch_execute(&state).unwrap();
        let held = StepRow {
            id: "s".into(),
            status: "IN_PROGRESS".into(),
            worker_id: Some("w".into()),
            lease_epoch: 3,
            started_at: Some(1_000),
            ..step_row(&run, 1, 500)
        };
        let done = StepRow {
            id: "done".into(),
            status: "SUCCEEDED".into(),
            worker_id: Some("w".into()),
            lease_epoch: 1,
            ..step_row(&run, 0, 100)
        };
        for s in [&held, &done] {
            OldStep::insert_old_step(c, s);
        }
        let lease = LeaseRow {
            step_id: "s".into(),
            worker_id: "w".into(),
            epoch: 3,
            granted_at: 1_000,
            expires_at: $expires,
            attempt: 1,
        };
        c.batch_execute(&format!(
            "INSERT INTO leases (step_id, worker_id, epoch, granted_at, expires_at, attempt) \
             VALUES ('s', 'w', 3, 1000, {}, 1)",
            lease.expires_at
        ))
        .unwrap();
        lease
    }};
}

/// What the upgraded database must show: the lease as it was, held by its worker, listed by
/// worker and in all; the finished step holds none; the expiry sweep takes it back.
fn check_upgraded(db: &Db, lease: &LeaseRow) {
    let mut c = db.conn().unwrap();
    assert_eq!(leases::get(&mut c, "s").unwrap().as_ref(), Some(lease));
    assert_eq!(leases::get(&mut c, "done").unwrap(), None);
    assert_eq!(leases::all(&mut c).unwrap(), vec![lease.clone()]);
    assert_eq!(leases::of_worker(&mut c, "w").unwrap(), vec![lease.clone()]);
    let held = c.write_tx(|c| leases::check(c, "s", "w", 3)).unwrap();
    assert_eq!(&held, lease);
    assert!(matches!(
        c.write_tx(|c| leases::check(c, "s", "w", 2)),
        Err(DbError::StaleLease)
    ));
    let after = lease.expires_at + 1;
    let taken = c.write_tx(|c| leases::expire_due(c, 5, after)).unwrap();
    assert_eq!(taken.len(), 1, "{taken:?}");
    assert_eq!((taken[0].step_id.as_str(), taken[0].epoch), ("s", 3));
    assert_eq!(leases::get(&mut c, "s").unwrap(), None);
    let step = loopd::db::steps::get(&mut c, "s").unwrap().unwrap();
    assert_eq!(step.status, "RETRYING");
}

#[test]
fn an_upgraded_sqlite_database_keeps_its_leases_in_their_steps() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("loopd.db");
    let lease = {
        let mut c = SqliteConnection::establish(&path.to_string_lossy()).unwrap();
        migrate_to_before_move(&mut c, || SQLITE);
        seed_old!(&mut c, 9_000)
    };
    let db = Db::open_sqlite(&path, 2).unwrap();
    // The view takes no writes, and refusing one changes nothing.
    let mut raw = SqliteConnection::establish(&path.to_string_lossy()).unwrap();
    let refused = raw.batch_execute("DELETE FROM leases");
    assert!(refused.is_err(), "{refused:?}");
    check_upgraded(&db, &lease);
}

#[test]
fn an_upgraded_postgres_database_keeps_its_leases_in_their_steps() {
    let t = crate::support::pg::TestDb::create();
    let lease = {
        let mut c = PgConnection::establish(&t.url).unwrap();
        migrate_to_before_move(&mut c, || POSTGRES);
        seed_old!(&mut c, 9_000)
    };
    let db = Db::open_postgres(&t.url, 2, true).unwrap();
    let mut raw = PgConnection::establish(&t.url).unwrap();
    for write in [
        "DELETE FROM leases",
        "UPDATE leases SET expires_at = 1",
        "INSERT INTO leases VALUES ('done', 'w', 2, 1, 2, 1)",
    ] {
        let refused = diesel::sql_query(write).execute(&mut raw);
        let msg = format!("{refused:?}");
        assert!(msg.contains("leases is a view"), "{write}: {msg}");
    }
    // Steps "done" and "s" are both still there.
    let n: i64 = steps::table.count().get_result(&mut raw).unwrap();
    assert_eq!(n, 2);
    check_upgraded(&db, &lease);
}
