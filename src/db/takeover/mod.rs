//! Taking over the database of the existing single-host daemon, which keeps its SQLite file
//! where loopd does (`~/.local/share/loopd/loopd.db`). Called by [`super::Db::open_sqlite`]
//! before anything else opens the file:
//!
//! 1. A read-only look (no write, no checkpoint): nothing yet or loopd's own database → the
//!    migrations go on as usual; anything but exactly the existing daemon's schema, or a file
//!    SQLite cannot read or check, → a one-line error, the file untouched and nothing made.
//! 2. The existing daemon's schema: a consistent copy first (`VACUUM INTO`, which reads what a
//!    `-wal` holds too) as `loopd.db.pre-loopd-<UTC time>`, never over an existing file.
//! 3. One write transaction: the copy must still equal the file (else the old daemon is still
//!    writing: refused), the old rows are read, the old tables dropped, loopd's migrations run
//!    (so they are marked applied) and the rows inserted in loopd's form (see [`map`]). On any
//!    failure it rolls back and the copy is removed again.
//!
//! A second start finds loopd's migrations table and does nothing more.

mod map;
mod recognise;
mod upstream;

use super::schema::{artifacts, events, run_state, runs, steps};
use super::DbError;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel::sqlite::SqliteConnection;
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use recognise::{Found, DIESEL_TABLE, UPSTREAM_TABLES};
use std::path::{Path, PathBuf};

/// Characters that must be escaped in the path of an SQLite `file:` URI.
const URI_PATH: &AsciiSet = &CONTROLS.add(b' ').add(b'#').add(b'%').add(b'?');

/// Rows per INSERT statement (SQLite's limit on bound values is 32,766).
const CHUNK: usize = 500;

/// What a take-over did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakeOver {
    pub copy: PathBuf,
    pub runs: usize,
    pub steps: usize,
    pub events: usize,
    pub artifacts: usize,
    pub restarted: usize,
    pub failed: usize,
}

/// Takes over the file at `path` when it is the existing daemon's database; refuses (one
/// line, file untouched) when it is neither that nor loopd's; does nothing otherwise.
pub(super) fn take_over_if_upstream(path: &Path) -> Result<Option<TakeOver>, DbError> {
    if !path.exists() {
        return Ok(None);
    }
    let refuse = |why: String| {
        DbError::Migration(format!(
            "{}: {why}; loopd did not take it over and left the file untouched",
            path.display()
        ))
    };
    let copy = {
        let mut ro = open_read_only(path).map_err(|e| refuse(e.to_string()))?;
        match recognise::classify(&mut ro) {
            Ok(Found::Fresh | Found::Loopd) => return Ok(None),
            Ok(Found::Other(why)) => return Err(refuse(why)),
            Err(e) => return Err(refuse(format!("not a readable SQLite database ({e})"))),
            Ok(Found::Upstream) => {}
        }
        check_integrity(&mut ro).map_err(refuse)?;
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        copy_aside(&mut ro, path, &stamp).map_err(|e| {
            refuse(format!(
                "the existing daemon's database, but it cannot be copied aside first ({e})"
            ))
        })?
    };
    match migrate_in_place(path, &copy) {
        Ok(done) => {
            tracing::warn!(
                copy = %done.copy.display(),
                runs = done.runs,
                steps = done.steps,
                events = done.events,
                artifacts = done.artifacts,
                restarted = done.restarted,
                failed = done.failed,
                "took over the existing daemon's database (its copy restores it)"
            );
            Ok(Some(done))
        }
        Err(e) => {
            let _ = std::fs::remove_file(&copy);
            Err(DbError::Migration(format!(
                "{}: the existing daemon's database, but the take-over failed ({e}); \
                 it was rolled back and the file is unchanged",
                path.display()
            )))
        }
    }
}

/// A connection that can neither write nor checkpoint (so the main file stays as it is).
fn open_read_only(path: &Path) -> Result<SqliteConnection, DbError> {
    let p = path.to_string_lossy();
    let uri = format!("file:{}?mode=ro", utf8_percent_encode(&p, URI_PATH));
    let mut c =
        SqliteConnection::establish(&uri).map_err(|e| DbError::Connect(format!("{p}: {e}")))?;
    c.batch_execute("PRAGMA busy_timeout = 10000;")?;
    Ok(c)
}

#[derive(QueryableByName)]
struct Line {
    #[diesel(sql_type = Text)]
    quick_check: String,
}

/// SQLite's own check of every page and index (O(size), once per take-over).
fn check_integrity(c: &mut SqliteConnection) -> Result<(), String> {
    let lines: Vec<Line> = diesel::sql_query("PRAGMA quick_check")
        .load(c)
        .map_err(|e| format!("the existing daemon's tables, but the file is damaged ({e})"))?;
    match lines.first().map(|l| l.quick_check.as_str()) {
        Some("ok") => Ok(()),
        first => {
            // Its first finding, on one line and short.
            let words: Vec<&str> = first.unwrap_or("no answer").split_whitespace().collect();
            let mut finding = words.join(" ");
            if let Some((cut, _)) = finding.char_indices().nth(160) {
                finding.truncate(cut);
                finding.push('…');
            }
            Err(format!(
                "the existing daemon's tables, but the file is damaged (integrity check: {finding})"
            ))
        }
    }
}

/// `VACUUM INTO` a free `<file>.pre-loopd-<UTC time>[-N]` next to the file: a consistent
/// snapshot including what the `-wal` holds. It refuses a target that exists.
fn copy_aside(c: &mut SqliteConnection, path: &Path, stamp: &str) -> Result<PathBuf, String> {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().to_string())
        .unwrap_or_else(|| "loopd.db".into());
    let base = path.with_file_name(format!("{file}.pre-loopd-{stamp}"));
    let copy = (1..)
        .map(|n| match n {
            1 => base.clone(),
            n => PathBuf::from(format!("{}-{n}", base.display())),
        })
        .find(|p| !p.exists())
        .unwrap_or(base);
    diesel::sql_query("VACUUM INTO ?")
        .bind::<Text, _>(copy.to_string_lossy().to_string())
        .execute(c)
        .map_err(|e| format!("{}: {e}", copy.display()))?;
    if let Ok(meta) = std::fs::metadata(path) {
        // The copy holds the same data: the same permissions.
        let _ = std::fs::set_permissions(&copy, meta.permissions());
    }
    Ok(copy)
}

/// Step 3 of the module comment, on a connection of its own.
fn migrate_in_place(path: &Path, copy: &Path) -> Result<TakeOver, DbError> {
    let mut c = SqliteConnection::establish(&path.to_string_lossy())
        .map_err(|e| DbError::Connect(format!("{}: {e}", path.display())))?;
    // Off (it is by default): the old tables are dropped while rows still refer to them. A
    // page cache of 64 MiB: every row is read twice (compared with the copy, loaded) and
    // written once, in one transaction.
    c.batch_execute(
        "PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = OFF; PRAGMA cache_size = -65536;",
    )?;
    diesel::sql_query("ATTACH DATABASE ? AS pre")
        .bind::<Text, _>(copy.to_string_lossy().to_string())
        .execute(&mut c)?;
    let now = crate::domain::time::now_ms();
    let result = c.immediate_transaction(|c| -> Result<TakeOver, DbError> {
        if recognise::classify(c)? != Found::Upstream {
            return Err(DbError::Conflict(
                "the file changed while it was copied aside".into(),
            ));
        }
        same_as_copy(c)?;
        let up = upstream::load(c)?;
        drop_old_tables(c)?;
        super::migrate::run_sqlite(c)?;
        let exists = |ws: &str| Path::new(ws).is_dir();
        let m = map::map(&up, now, &exists);
        for (run, warning) in &m.config_warnings {
            tracing::warn!(run_id = %run, "take-over: run configuration: {warning}");
        }
        insert(c, &m)?;
        Ok(TakeOver {
            copy: copy.to_path_buf(),
            runs: m.runs.len(),
            steps: m.steps.len(),
            events: up.events.len(),
            artifacts: m.artifacts.len(),
            restarted: m.restarted.len(),
            failed: m.failed.len(),
        })
    });
    let _ = diesel::sql_query("DETACH DATABASE pre").execute(&mut c);
    result
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// The copy must hold exactly the rows the file holds now: a difference means someone (the
/// old daemon, still running) wrote between the copy and this transaction. Rows are unique
/// (each table has a primary key), so equal counts and no row of the file missing from the
/// copy make the two equal.
fn same_as_copy(c: &mut SqliteConnection) -> Result<(), DbError> {
    for t in UPSTREAM_TABLES {
        let q = format!(
            "SELECT abs((SELECT count(*) FROM main.{t}) - (SELECT count(*) FROM pre.{t})) \
                  + (SELECT count(*) FROM (SELECT * FROM main.{t} EXCEPT SELECT * FROM pre.{t})) \
             AS n"
        );
        let differ: Count = diesel::sql_query(q).get_result(c)?;
        if differ.n != 0 {
            return Err(DbError::Conflict(format!(
                "table {t} changed while the file was copied aside: is the existing daemon \
                 still running? Stop it first"
            )));
        }
    }
    Ok(())
}

fn drop_old_tables(c: &mut SqliteConnection) -> Result<(), DbError> {
    for t in UPSTREAM_TABLES.iter().rev() {
        c.batch_execute(&format!("DROP TABLE main.{t};"))?;
    }
    // Empty (checked by `recognise`): left by an earlier loopd that failed on this file.
    c.batch_execute(&format!("DROP TABLE IF EXISTS main.{DIESEL_TABLE};"))?;
    Ok(())
}

fn insert(c: &mut SqliteConnection, m: &map::Mapped) -> Result<(), DbError> {
    for chunk in m.runs.chunks(CHUNK) {
        diesel::insert_into(runs::table).values(chunk).execute(c)?;
    }
    for chunk in m.states.chunks(CHUNK) {
        diesel::insert_into(run_state::table)
            .values(chunk)
            .execute(c)?;
    }
    for chunk in m.steps.chunks(CHUNK) {
        diesel::insert_into(steps::table).values(chunk).execute(c)?;
    }
    for chunk in m.events.chunks(CHUNK) {
        diesel::insert_into(events::table)
            .values(chunk)
            .execute(c)?;
    }
    for chunk in m.artifacts.chunks(CHUNK) {
        diesel::insert_into(artifacts::table)
            .values(chunk)
            .execute(c)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
