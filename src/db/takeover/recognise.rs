//! What an SQLite file holds, told from its `sqlite_master` alone: nothing yet, loopd's own
//! database (diesel's migrations table with rows), exactly the existing daemon's schema (the
//! tables and columns of its migrations 0001–0004), or something else — described in one
//! line. Read-only; used by the take-over before and inside its transaction.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::sqlite::SqliteConnection;
use std::collections::BTreeMap;

/// diesel's table of applied migrations: loopd's mark.
pub const DIESEL_TABLE: &str = "__diesel_schema_migrations";

/// The existing daemon's tables, in the order they reference each other.
pub const UPSTREAM_TABLES: [&str; 4] = ["runs", "steps", "events", "artifacts"];

/// What the file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// No table (a new or empty file, or one where loopd only created its migrations table).
    Fresh,
    /// loopd's own database.
    Loopd,
    /// Exactly the existing daemon's schema (perhaps with the empty migrations table an
    /// earlier loopd left when it failed on it).
    Upstream,
    /// Anything else, said in one line.
    Other(String),
}

/// One column as `pragma_table_info` gives it.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
struct Column {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    ty: String,
    #[diesel(sql_type = BigInt)]
    not_null: i64,
    #[diesel(sql_type = Nullable<Text>)]
    dflt: Option<String>,
    #[diesel(sql_type = BigInt)]
    pk: i64,
}

/// An expected column: name, declared type, NOT NULL, default, primary key.
type Expected = (&'static str, &'static str, bool, Option<&'static str>, bool);

const T: &str = "TEXT";
const I: &str = "INTEGER";

/// The existing daemon's columns (migrations 0002–0004 add the last seven of `runs`).
fn upstream_columns(table: &str) -> &'static [Expected] {
    match table {
        "runs" => &[
            ("id", T, false, None, true),
            ("name", T, true, None, false),
            ("name_source", T, true, None, false),
            ("status", T, true, None, false),
            ("workspace_root", T, true, None, false),
            ("spec_path", T, true, None, false),
            ("plan_path", T, false, None, false),
            ("base_branch", T, false, None, false),
            ("run_branch", T, false, None, false),
            ("merge_target_branch", T, false, None, false),
            ("merge_strategy", T, false, None, false),
            ("worktree_path", T, false, None, false),
            ("config_json", T, false, None, false),
            ("created_at", I, true, None, false),
            ("updated_at", I, true, None, false),
            ("worktree_provider", T, false, None, false),
            ("worktree_cleanup_status", T, false, None, false),
            ("worktree_cleaned_at", I, false, None, false),
            ("review_status", T, false, Some("'pending'"), false),
            ("review_action_at", I, false, None, false),
            ("pr_url", T, false, None, false),
            ("merge_commit", T, false, None, false),
        ],
        "steps" => &[
            ("id", T, false, None, true),
            ("run_id", T, true, None, false),
            ("phase", T, true, None, false),
            ("status", T, true, None, false),
            ("attempt", I, true, Some("1"), false),
            ("started_at", I, false, None, false),
            ("ended_at", I, false, None, false),
            ("exit_code", I, false, None, false),
            ("prompt_path", T, false, None, false),
            ("output_path", T, false, None, false),
        ],
        "events" => &[
            ("id", T, false, None, true),
            ("run_id", T, true, None, false),
            ("step_id", T, false, None, false),
            ("type", T, true, None, false),
            ("ts", I, true, None, false),
            ("payload_json", T, true, None, false),
        ],
        "artifacts" => &[
            ("id", T, false, None, true),
            ("run_id", T, true, None, false),
            ("kind", T, true, None, false),
            ("location", T, true, None, false),
            ("path", T, true, None, false),
            ("checksum", T, false, None, false),
        ],
        _ => &[],
    }
}

#[derive(QueryableByName)]
struct Object {
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Tells what the `main` database of `c` holds. An error is a file SQLite cannot read.
pub fn classify(c: &mut SqliteConnection) -> QueryResult<Found> {
    let objects: Vec<Object> = diesel::sql_query(
        "SELECT type AS kind, name FROM main.sqlite_master \
         WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
    )
    .load(c)?;
    let others: Vec<String> = objects
        .iter()
        .filter(|o| o.kind != "table" && o.kind != "index")
        .map(|o| format!("{} {}", o.kind, o.name))
        .collect();
    let mut tables: Vec<&str> = objects
        .iter()
        .filter(|o| o.kind == "table")
        .map(|o| o.name.as_str())
        .collect();
    if let Some(i) = tables.iter().position(|t| *t == DIESEL_TABLE) {
        let applied: Count =
            diesel::sql_query(format!("SELECT count(*) AS n FROM main.{DIESEL_TABLE}"))
                .get_result(c)?;
        if applied.n > 0 {
            return Ok(Found::Loopd);
        }
        // An earlier loopd created it, then failed: it holds nothing.
        tables.remove(i);
    }
    if tables.is_empty() && others.is_empty() {
        return Ok(Found::Fresh);
    }
    if !others.is_empty() {
        return Ok(Found::Other(format!(
            "found {} besides tables {}: neither loopd's database nor the existing daemon's",
            others.join(", "),
            list(&tables)
        )));
    }
    if let Some(problem) = table_set_problem(&tables) {
        return Ok(Found::Other(problem));
    }
    let mut problems = Vec::new();
    for table in UPSTREAM_TABLES {
        let cols: Vec<Column> = diesel::sql_query(
            "SELECT name, type AS ty, \"notnull\" AS not_null, dflt_value AS dflt, pk \
             FROM pragma_table_info(?, 'main')",
        )
        .bind::<Text, _>(table)
        .load(c)?;
        problems.extend(column_problem(table, &cols));
    }
    if problems.is_empty() {
        Ok(Found::Upstream)
    } else {
        Ok(Found::Other(format!(
            "found the existing daemon's tables, but {}: not a schema loopd knows how to take over",
            problems.join("; ")
        )))
    }
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "(none)".into()
    } else {
        names.join(", ")
    }
}

/// Why a table set is not exactly the existing daemon's, if it is not.
fn table_set_problem(tables: &[&str]) -> Option<String> {
    let missing: Vec<&str> = UPSTREAM_TABLES
        .iter()
        .copied()
        .filter(|t| !tables.contains(t))
        .collect();
    let extra: Vec<&str> = tables
        .iter()
        .copied()
        .filter(|t| !UPSTREAM_TABLES.contains(t))
        .collect();
    if missing.is_empty() && extra.is_empty() {
        return None;
    }
    let known: Vec<&str> = tables
        .iter()
        .copied()
        .filter(|t| UPSTREAM_TABLES.contains(t))
        .collect();
    Some(if extra.is_empty() {
        format!(
            "found the existing daemon's tables {} but not {}: an incomplete database",
            known.join(", "),
            missing.join(", ")
        )
    } else {
        format!(
            "found tables {}: neither loopd's database nor the existing daemon's \
             (runs, steps, events, artifacts)",
            list(tables)
        )
    })
}

/// How `table`'s columns differ from the existing daemon's, if they do.
fn column_problem(table: &str, cols: &[Column]) -> Option<String> {
    let want = upstream_columns(table);
    let have: BTreeMap<&str, &Column> = cols.iter().map(|c| (c.name.as_str(), c)).collect();
    let lacks: Vec<&str> = want
        .iter()
        .map(|w| w.0)
        .filter(|n| !have.contains_key(n))
        .collect();
    let unknown: Vec<&str> = cols
        .iter()
        .map(|c| c.name.as_str())
        .filter(|n| !want.iter().any(|w| w.0 == *n))
        .collect();
    let changed: Vec<&str> = want
        .iter()
        .filter(|(name, ty, notnull, dflt, pk)| {
            have.get(name).is_some_and(|c| {
                !c.ty.eq_ignore_ascii_case(ty)
                    || (c.not_null != 0) != *notnull
                    || c.dflt.as_deref() != *dflt
                    || (c.pk != 0) != *pk
            })
        })
        .map(|w| w.0)
        .collect();
    let mut parts = Vec::new();
    if !lacks.is_empty() {
        parts.push(format!("{table} lacks {}", lacks.join(", ")));
    }
    if !unknown.is_empty() {
        parts.push(format!(
            "{table} has unknown columns {}",
            unknown.join(", ")
        ));
    }
    if !changed.is_empty() {
        parts.push(format!(
            "{table} declares {} differently",
            changed.join(", ")
        ));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::connection::SimpleConnection;

    const SCHEMA: &str = include_str!("../../../tests/fixtures/upstream-loopd/schema.sql");

    fn db(sql: &str) -> SqliteConnection {
        let mut c = SqliteConnection::establish(":memory:").expect("memory db");
        c.batch_execute(sql).expect("schema");
        c
    }

    #[test]
    fn the_existing_daemons_schema_is_recognised_exactly() {
        assert_eq!(classify(&mut db(SCHEMA)).unwrap(), Found::Upstream);
        // As an earlier loopd left it: its empty migrations table added.
        let tried = format!("{SCHEMA} CREATE TABLE {DIESEL_TABLE} (version TEXT PRIMARY KEY);");
        assert_eq!(classify(&mut db(&tried)).unwrap(), Found::Upstream);
    }

    #[test]
    fn empty_and_loopd_files_are_left_to_the_migrations() {
        assert_eq!(classify(&mut db("")).unwrap(), Found::Fresh);
        let loopd = format!(
            "{SCHEMA} CREATE TABLE {DIESEL_TABLE} (version TEXT PRIMARY KEY); \
             INSERT INTO {DIESEL_TABLE} VALUES ('1');"
        );
        assert_eq!(classify(&mut db(&loopd)).unwrap(), Found::Loopd);
    }

    fn other(sql: &str) -> String {
        match classify(&mut db(sql)).unwrap() {
            Found::Other(why) => why,
            f => panic!("{f:?} for {sql}"),
        }
    }

    #[test]
    fn anything_else_is_described_in_one_line() {
        let newer = format!("{SCHEMA} ALTER TABLE runs ADD COLUMN priority INTEGER;");
        let why = other(&newer);
        assert!(why.contains("runs has unknown columns priority"), "{why}");
        let older = SCHEMA.replace(", merge_commit TEXT", "");
        let why = other(&older);
        assert!(why.contains("runs lacks merge_commit"), "{why}");
        let half = format!("{SCHEMA} DROP TABLE artifacts; DROP TABLE events;");
        let why = other(&half);
        assert!(
            why.contains("runs, steps but not events, artifacts"),
            "{why}"
        );
        let foreign = other("CREATE TABLE notes (x); CREATE TABLE runs (id TEXT);");
        assert!(foreign.contains("found tables notes, runs"), "{foreign}");
        let view = other(&format!("{SCHEMA} CREATE VIEW v AS SELECT 1;"));
        assert!(view.contains("view v"), "{view}");
        for why in [why, foreign, view] {
            assert!(!why.contains('\n'), "{why}");
        }
    }
}
