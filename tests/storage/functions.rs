//! The Postgres functions' current text (`src/db/pg/<function>.sql`), written at start after
//! the migrations: a database migrated by the version before that change ends with exactly the
//! functions, views, triggers and indexes of a fresh one; a restart rewrites nothing; a function
//! whose copy differs from its file is rewritten alone; controllers starting at once on a new
//! database all start.

use super::{claim, seed};
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use loopd::db::Db;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

const POSTGRES: EmbeddedMigrations = embed_migrations!("migrations/postgres");
/// The last migration of the version before the functions moved out of the migrations: a
/// database it left is what an upgrade starts from.
const LAST_BEFORE: &str = "queued_by_columns";

/// One object of the schema as Postgres prints it back.
#[derive(QueryableByName, Debug, PartialEq, Eq, Clone)]
struct Object {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    def: String,
    #[diesel(sql_type = Text)]
    note: String,
}

/// Every function (its definition and comment), view, trigger and index of the public schema.
fn catalog(url: &str) -> Vec<Object> {
    let mut c = PgConnection::establish(url).unwrap();
    diesel::sql_query(
        "SELECT 'function ' || p.oid::regprocedure::text AS name, pg_get_functiondef(p.oid) AS def,
                coalesce(obj_description(p.oid, 'pg_proc'), '') AS note
           FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
         UNION ALL
         SELECT 'view ' || viewname, pg_get_viewdef(format('%I', viewname)::regclass), ''
           FROM pg_views WHERE schemaname = 'public'
         UNION ALL
         SELECT 'trigger ' || tgname, pg_get_triggerdef(oid), '' FROM pg_trigger
          WHERE NOT tgisinternal
         UNION ALL
         SELECT 'index ' || indexname, indexdef, '' FROM pg_indexes WHERE schemaname = 'public'
         ORDER BY 1",
    )
    .load(&mut c)
    .unwrap()
}

/// The loopd functions of the database at `url`, by name: (row version in `pg_proc`, comment).
fn functions(url: &str) -> BTreeMap<String, (i64, Option<String>)> {
    #[derive(QueryableByName)]
    struct F {
        #[diesel(sql_type = Text)]
        name: String,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        version: i64,
        #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
        note: Option<String>,
    }
    let mut c = PgConnection::establish(url).unwrap();
    let rows: Vec<F> = diesel::sql_query(
        "SELECT proname::text AS name, xmin::text::bigint AS version,
                obj_description(oid, 'pg_proc') AS note
           FROM pg_proc WHERE pronamespace = 'public'::regnamespace AND proname LIKE 'loopd%'",
    )
    .load(&mut c)
    .unwrap();
    let mut out = BTreeMap::new();
    for f in rows {
        let before = out.insert(f.name.clone(), (f.version, f.note));
        assert!(before.is_none(), "one function named {}", f.name);
    }
    out
}

/// The function files, by name: the comment each function carries once written from its file.
fn files() -> BTreeMap<String, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/db/pg");
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        let Some(name) = path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .strip_suffix(".sql")
        else {
            continue;
        };
        let digest = hex::encode(Sha256::digest(std::fs::read(&path).unwrap()));
        let tag = format!("loopd: src/db/pg/{name}.sql sha256:{digest}");
        out.insert(name.to_string(), tag);
    }
    out
}

/// Every loopd function of the database is written from its file, and every file has its
/// function.
fn assert_current(url: &str) {
    let tags: BTreeMap<String, Option<String>> = functions(url)
        .into_iter()
        .map(|(name, (_, note))| (name, note))
        .collect();
    let want: BTreeMap<String, Option<String>> =
        files().into_iter().map(|(n, t)| (n, Some(t))).collect();
    assert_eq!(tags, want);
}

#[test]
fn a_database_of_the_previous_version_starts_and_ends_with_the_functions_of_a_fresh_one() {
    let old = crate::support::pg::TestDb::create();
    {
        let mut c = PgConnection::establish(&old.url).unwrap();
        let pending = c.pending_migrations(POSTGRES).unwrap();
        let last = pending
            .iter()
            .position(|m| m.name().to_string().contains(LAST_BEFORE))
            .expect("the previous version's last migration exists");
        for m in &pending[..=last] {
            c.run_migration(m.as_ref()).unwrap();
        }
    }
    assert!(
        functions(&old.url).values().all(|(_, note)| note.is_none()),
        "the previous version wrote its functions from the migrations alone"
    );
    let upgraded = Db::open_postgres(&old.url, 2, true).unwrap();
    assert_current(&old.url);
    let fresh = crate::support::pg::TestDb::create();
    Db::open_postgres(&fresh.url, 2, true).unwrap();
    let (a, b) = (catalog(&old.url), catalog(&fresh.url));
    assert!(a
        .iter()
        .any(|o| o.name.starts_with("function loopd_claim(")));
    assert_eq!(a, b);
    // The upgraded database's hot path works.
    let (_, ids) = seed(&upgraded, "RUNNING", "", 1);
    let mut c = upgraded.conn().unwrap();
    let got = claim(&mut c, "w", &[], 60_000).expect("claimed");
    assert_eq!(got.step.id, ids[0]);
}

#[test]
fn a_restart_rewrites_only_the_functions_whose_copy_differs_from_their_file() {
    let t = crate::support::pg::TestDb::create();
    Db::open_postgres(&t.url, 2, true).unwrap();
    let first = functions(&t.url);
    let defs = catalog(&t.url);
    Db::open_postgres(&t.url, 2, true).unwrap();
    assert_eq!(functions(&t.url), first, "a restart writes no function");

    // A copy written by another version (its own text, its own file's digest).
    let mut c = PgConnection::establish(&t.url).unwrap();
    diesel::sql_query(
        "CREATE OR REPLACE FUNCTION loopd_watch_inputs(p_run TEXT) RETURNS JSONB
         LANGUAGE plpgsql STABLE AS $$ BEGIN RETURN '{}'; END $$",
    )
    .execute(&mut c)
    .unwrap();
    diesel::sql_query(
        "COMMENT ON FUNCTION loopd_watch_inputs IS 'loopd: src/db/pg/loopd_watch_inputs.sql sha256:00'",
    )
    .execute(&mut c)
    .unwrap();
    let changed = functions(&t.url);
    Db::open_postgres(&t.url, 2, true).unwrap();
    let after = functions(&t.url);
    for (name, (version, _)) in &after {
        let rewritten = *version != changed[name].0;
        assert_eq!(rewritten, name == "loopd_watch_inputs", "{name}");
    }
    assert_eq!(
        catalog(&t.url),
        defs,
        "the function is back to its file's text"
    );
    assert_current(&t.url);
}

#[test]
fn controllers_starting_at_once_on_a_new_database_all_start_with_the_current_functions() {
    let t = crate::support::pg::TestDb::create();
    let start = std::sync::Arc::new(std::sync::Barrier::new(4));
    let starters: Vec<_> = (0..4)
        .map(|_| {
            let (url, start) = (t.url.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                Db::open_postgres(&url, 1, true).map(|_| ())
            })
        })
        .collect();
    for s in starters {
        let started = s.join().unwrap();
        assert!(started.is_ok(), "{started:?}");
    }
    assert_current(&t.url);
}
