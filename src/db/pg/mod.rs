//! The current text of every Postgres function loopd defines, one file each beside this one
//! (`<function>.sql`, a `CREATE OR REPLACE FUNCTION` with a header saying what it does and who
//! calls it), and [`apply`], which brings a database's functions to that text. Only
//! `migrate::run_postgres` calls it: at start, after the migrations, under the same advisory
//! lock, so controllers starting at once on one database take turns.
//!
//! Why applied at start rather than generated into migrations: a migration, once released, is
//! history that existing databases have applied and must never change, so a generated one
//! would still hold a copy of the function's text, and every change would add another (the
//! migrations restated these functions eleven times before). Applied at start, a function has
//! one text, a change to it needs no migration, and every database that a controller opens ends
//! with the text of that binary, whatever its migrations left.
//!
//! Each function rewritten carries a comment (`COMMENT ON FUNCTION`) naming its file and the
//! SHA-256 of the file's text; a start whose files match the comments writes nothing. A rewrite
//! costs little, but it invalidates every connection's cached plans of the function, and the
//! hot path runs through these functions.
//!
//! What the files cannot do alone: `CREATE OR REPLACE` keeps a function's name and argument
//! types and cannot change its return type. Such a change needs a migration that drops the old
//! function first (the rewrite of its comment fails while two functions share the name). Tables,
//! indexes, the `leases` view and its trigger are schema: they stay in `migrations/postgres/`.
//! And controllers of two versions sharing one database would each write their own text when
//! they start (the last one started wins), where a migration is only ever applied forward.

use super::DbError;
use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{Array, Nullable, Text};
use sha2::{Digest, Sha256};

/// One function: its name (also its file's) and its file's text.
struct Function {
    name: &'static str,
    sql: &'static str,
}

impl Function {
    /// The comment the function carries once written from this text.
    fn tag(&self) -> String {
        let digest = hex::encode(Sha256::digest(self.sql.as_bytes()));
        format!("loopd: src/db/pg/{}.sql sha256:{digest}", self.name)
    }
}

macro_rules! functions {
    ($($name:ident),+ $(,)?) => {
        &[$(Function {
            name: stringify!($name),
            sql: include_str!(concat!(stringify!($name), ".sql")),
        }),+]
    };
}

/// Every function, in the order they are written (those in `LANGUAGE sql`, whose bodies are
/// checked when created, before those that call them).
const FUNCTIONS: &[Function] = functions!(
    loopd_now_ms,
    loopd_lease_of,
    loopd_leases_read_only,
    loopd_watch_inputs,
    loopd_decision_inputs,
    loopd_account_in_flight,
    loopd_account_has_slot,
    loopd_claim,
    loopd_complete_snapshot,
    loopd_complete_apply_at,
    loopd_complete_apply,
    loopd_complete_and_claim,
    loopd_complete_and_claim_many,
);

#[derive(QueryableByName)]
struct Stored {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Nullable<Text>)]
    tag: Option<String>,
}

/// Writes every function whose comment does not match its file, all in one transaction;
/// returns how many. Call it holding the migration lock.
pub(super) fn apply(conn: &mut PgConnection) -> Result<usize, DbError> {
    let names: Vec<&str> = FUNCTIONS.iter().map(|f| f.name).collect();
    let stored: Vec<Stored> = diesel::sql_query(
        "SELECT p.proname::text AS name, obj_description(p.oid, 'pg_proc') AS tag \
           FROM pg_proc p \
          WHERE p.pronamespace = current_schema()::regnamespace AND p.proname = ANY ($1)",
    )
    .bind::<Array<Text>, _>(names)
    .load(conn)?;
    let stale: Vec<(&Function, String)> = FUNCTIONS
        .iter()
        .map(|f| (f, f.tag()))
        .filter(|(f, tag)| {
            !stored
                .iter()
                .any(|s| s.name == f.name && s.tag.as_deref() == Some(tag.as_str()))
        })
        .collect();
    if stale.is_empty() {
        return Ok(0);
    }
    conn.transaction(|c| {
        for (f, tag) in &stale {
            let failed = |e: diesel::result::Error| {
                DbError::Migration(format!("src/db/pg/{}.sql: {e}", f.name))
            };
            c.batch_execute(f.sql).map_err(failed)?;
            // The tag is hex and a path: nothing in it needs quoting.
            c.batch_execute(&format!("COMMENT ON FUNCTION {} IS '{tag}'", f.name))
                .map_err(failed)?;
        }
        Ok::<_, DbError>(())
    })?;
    let names: Vec<&str> = stale.iter().map(|(f, _)| f.name).collect();
    tracing::info!(functions = ?names, "postgres functions written from their current text");
    Ok(stale.len())
}

#[cfg(test)]
mod tests {
    use super::FUNCTIONS;

    #[test]
    fn every_sql_file_beside_the_module_is_a_listed_function_that_creates_itself() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/db/pg");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter_map(|n| n.strip_suffix(".sql").map(str::to_owned))
            .collect();
        files.sort();
        let mut listed: Vec<String> = FUNCTIONS.iter().map(|f| f.name.to_owned()).collect();
        listed.sort();
        assert_eq!(
            files, listed,
            "every file is written at start, and only they"
        );
        for f in FUNCTIONS {
            let creates = format!("CREATE OR REPLACE FUNCTION {}(", f.name);
            assert_eq!(
                f.sql.matches("CREATE OR REPLACE FUNCTION").count(),
                1,
                "{}: one function per file",
                f.name
            );
            assert!(f.sql.contains(&creates), "{}: creates itself", f.name);
        }
    }
}
