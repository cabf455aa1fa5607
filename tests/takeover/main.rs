//! Taking over the database of the existing single-host daemon: a real `loopd --role single`
//! started on a copy of its database (tests/fixtures/upstream-loopd), on one made on the spot
//! in WAL mode with a run it left RUNNING in a real git workspace, and on damaged or unknown
//! files it must refuse without touching them.

#[path = "../support/mod.rs"]
mod support;

mod fixture;
mod refused;
mod resume;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel::sqlite::SqliteConnection;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::proc::Loopd;
use support::wait_for;

/// How long a run may take to reach a state.
const STATE_TIMEOUT: Duration = Duration::from_secs(60);

/// The database the existing daemon wrote (6 runs in every status).
fn fixture_db() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/upstream-loopd/loopd.db")
}

/// The existing daemon's schema (its `sqlite_master`).
fn upstream_schema() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/upstream-loopd/schema.sql"),
    )
    .expect("schema.sql")
}

/// Copies the fixture to `data/loopd.db` (writable) and returns its path.
fn install_fixture(data: &Path) -> PathBuf {
    std::fs::create_dir_all(data).expect("data dir");
    let db = data.join("loopd.db");
    std::fs::copy(fixture_db(), &db).expect("copy fixture");
    let mut perms = std::fs::metadata(&db).expect("meta").permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&db, perms).expect("writable");
    db
}

fn sha256(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).expect("read file")))
}

fn open(path: &Path) -> SqliteConnection {
    support::open_live_sqlite(path)
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Text)]
    row: String,
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

/// Every row of `table` (that passes `filter`, an SQL condition), each as one string of its
/// quoted values, in rowid order.
fn dump_table(c: &mut SqliteConnection, table: &str, filter: &str) -> Vec<String> {
    let cols: Vec<Name> = diesel::sql_query("SELECT name FROM pragma_table_info(?)")
        .bind::<Text, _>(table)
        .load(c)
        .expect("columns");
    let expr: Vec<String> = cols
        .iter()
        .map(|c| format!("quote(\"{}\")", c.name))
        .collect();
    let q = format!(
        "SELECT {} AS row FROM \"{table}\" WHERE {filter} ORDER BY rowid",
        expr.join(" || '|' || ")
    );
    diesel::sql_query(q)
        .load::<Row>(c)
        .expect("rows")
        .into_iter()
        .map(|r| r.row)
        .collect()
}

/// The rows of the named tables of the database at `path`.
fn dump(path: &Path, tables: &[&str]) -> Vec<(String, Vec<String>)> {
    let with: Vec<(&str, &str)> = tables.iter().map(|t| (*t, "1")).collect();
    dump_where(path, &with)
}

/// The rows of the named tables that pass their filter.
fn dump_where(path: &Path, tables: &[(&str, &str)]) -> Vec<(String, Vec<String>)> {
    let mut c = open(path);
    tables
        .iter()
        .map(|(t, filter)| (t.to_string(), dump_table(&mut c, t, filter)))
        .collect()
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn count(c: &mut SqliteConnection, sql: &str) -> i64 {
    diesel::sql_query(sql)
        .get_result::<Count>(c)
        .expect("count")
        .n
}

/// The copies set aside next to `db` (`loopd.db.pre-loopd-*`).
fn copies(db: &Path) -> Vec<PathBuf> {
    let prefix = format!(
        "{}.pre-loopd-",
        db.file_name().expect("name").to_string_lossy()
    );
    let mut v: Vec<PathBuf> = std::fs::read_dir(db.parent().expect("dir"))
        .expect("read dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

async fn get_json(daemon: &Loopd, path: &str) -> Value {
    let r = reqwest::get(format!("{}{path}", daemon.url()))
        .await
        .expect("GET");
    assert!(r.status().is_success(), "GET {path}: {}", r.status());
    r.json().await.expect("JSON body")
}

/// The run `id` as the API shows it.
async fn run(daemon: &Loopd, id: &str) -> Value {
    get_json(daemon, &format!("/runs/{id}")).await["run"].clone()
}

async fn steps(daemon: &Loopd, id: &str) -> Vec<Value> {
    get_json(daemon, &format!("/runs/{id}/steps")).await["steps"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The events of an ended run as its SSE stream gives them (it closes after the last one):
/// (cursor, the event's JSON).
async fn events(daemon: &Loopd, id: &str) -> Vec<(i64, Value)> {
    let r = reqwest::get(format!("{}/runs/{id}/events", daemon.url()))
        .await
        .expect("GET events");
    assert!(r.status().is_success());
    let body = tokio::time::timeout(STATE_TIMEOUT, r.text())
        .await
        .expect("the events stream of an ended run closes")
        .expect("body");
    let mut out = Vec::new();
    for frame in body.split("\n\n") {
        let (mut cursor, mut data) = (None, None);
        for line in frame.lines() {
            if let Some(v) = line.strip_prefix("id:") {
                cursor = v.trim().parse::<i64>().ok();
            } else if let Some(v) = line.strip_prefix("data:") {
                data = serde_json::from_str::<Value>(v.trim()).ok();
            }
        }
        if let (Some(c), Some(d)) = (cursor, data) {
            out.push((c, d));
        }
    }
    out
}

/// Waits for run `id` to have status `want`; the run.
async fn wait_status(daemon: &Loopd, id: &str, want: &str) -> Value {
    let what = format!("run {id} to be {want} (log: {})", daemon.log.display());
    wait_for(&what, STATE_TIMEOUT, || async {
        let r = run(daemon, id).await;
        (r["status"] == want).then_some(r)
    })
    .await
}

/// SIGTERM, and waits for the process to end.
async fn stop(daemon: &mut Loopd) {
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    daemon.wait_exit(Duration::from_secs(30)).await;
}

/// RFC 3339 of epoch milliseconds, as the API writes times.
fn rfc3339(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .expect("time")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
