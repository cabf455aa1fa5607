//! Unit tests of the take-over: recognising the existing daemon's schema and converting it.

use super::*;

const SCHEMA: &str = include_str!("../../../tests/fixtures/upstream-loopd/schema.sql");

/// A file with the existing daemon's schema, one ended run, and `extra` SQL.
fn upstream_file(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("loopd.db");
    let mut c = SqliteConnection::establish(&path.to_string_lossy()).expect("create");
    c.batch_execute(SCHEMA).expect("schema");
    c.batch_execute(
        "INSERT INTO runs (id, name, name_source, status, workspace_root, spec_path, \
           created_at, updated_at) \
         VALUES ('r1', 'orbit', 'spec_slug', 'COMPLETED', '/nowhere', '/nowhere/spec.md', 1, 2);",
    )
    .expect("run");
    c.batch_execute(extra).expect("extra");
    path
}

fn found(path: &Path) -> Found {
    recognise::classify(&mut open_read_only(path).expect("open")).expect("classify")
}

fn bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read")
}

#[test]
fn a_file_an_earlier_loopd_failed_on_is_taken_over_and_marked_migrated() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = upstream_file(
        dir.path(),
        &format!("CREATE TABLE {DIESEL_TABLE} (version VARCHAR(50) PRIMARY KEY NOT NULL);"),
    );
    let done = take_over_if_upstream(&path)
        .expect("taken over")
        .expect("it was the existing daemon's");
    assert_eq!((done.runs, done.restarted, done.failed), (1, 0, 0));
    assert!(done.copy.exists());
    assert_eq!(
        found(&path),
        Found::Loopd,
        "loopd's migrations are marked applied"
    );
    assert_eq!(
        found(&done.copy),
        Found::Upstream,
        "the copy is the old file"
    );
    // Nothing more on the next start.
    assert_eq!(take_over_if_upstream(&path).expect("again"), None);
}

#[test]
fn a_copy_never_replaces_a_file_of_the_same_name() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = upstream_file(dir.path(), "");
    let taken = dir.path().join("loopd.db.pre-loopd-20261206T120000Z");
    std::fs::write(&taken, "an earlier copy").expect("write");
    let mut ro = open_read_only(&path).expect("open");
    let copy = copy_aside(&mut ro, &path, "20261206T120000Z").expect("copy");
    assert_eq!(
        copy,
        dir.path().join("loopd.db.pre-loopd-20261206T120000Z-2")
    );
    assert_eq!(bytes(&taken), b"an earlier copy");
    assert_eq!(found(&copy), Found::Upstream);
}

#[test]
fn a_file_written_after_its_copy_is_not_taken_over_and_stays_as_it_was() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = upstream_file(dir.path(), "");
    let copy = {
        let mut ro = open_read_only(&path).expect("open");
        copy_aside(&mut ro, &path, "20261206T120000Z").expect("copy")
    };
    // The old daemon, still running, writes after the copy was made.
    let mut w = SqliteConnection::establish(&path.to_string_lossy()).expect("open");
    w.batch_execute("UPDATE runs SET status = 'FAILED' WHERE id = 'r1';")
        .expect("write");
    drop(w);
    let before = bytes(&path);
    let err = migrate_in_place(&path, &copy).expect_err("refused");
    assert!(
        err.to_string()
            .contains("is the existing daemon still running"),
        "{err}"
    );
    assert_eq!(bytes(&path), before, "rolled back: the file is as it was");
    assert_eq!(found(&path), Found::Upstream);
}
