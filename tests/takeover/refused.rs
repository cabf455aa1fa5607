//! Files loopd must not take over — not a database, a damaged one, a newer or incomplete
//! schema of the existing daemon: the process stops with one line that says what it found,
//! and the file is left byte for byte as it was, with no copy or side file made.

use super::support::proc::Loopd;
use super::support::test_dir;
use super::*;
use diesel::connection::SimpleConnection;

/// Starts loopd on `data` (holding `loopd.db`), expects it to refuse; its one-line message.
async fn refusal(data: &Path) -> String {
    let db = data.join("loopd.db");
    let hash = sha256(&db);
    let mut daemon = Loopd::spawn(data, &["--role", "single"], &[]);
    let status = daemon.wait_exit(Duration::from_secs(30)).await;
    assert!(
        !status.success(),
        "loopd must refuse: {}",
        daemon.log_text()
    );
    let log = daemon.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with("loopd:")).collect();
    assert_eq!(lines.len(), 1, "one line: {log}");
    assert_eq!(sha256(&db), hash, "the file is untouched");
    let mut made: Vec<String> = std::fs::read_dir(data)
        .expect("data dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    made.sort();
    assert_eq!(made, ["loopd.db", "loopd.log"], "nothing else is made");
    lines[0].to_string()
}

fn damaged_copy(data: &Path, how: impl FnOnce(&Path)) {
    let db = install_fixture(data);
    how(&db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_a_database_is_refused_and_left_untouched() {
    let dir = test_dir("takeover-garbage");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data");
    std::fs::write(data.join("loopd.db"), "not a database\n".repeat(500)).expect("write");
    let line = refusal(&data).await;
    assert!(line.contains("not a readable SQLite database"), "{line}");
    assert!(line.contains("left the file untouched"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_database_of_the_existing_daemon_is_refused_and_left_untouched() {
    let dir = test_dir("takeover-damaged");
    let data = dir.path().join("data");
    damaged_copy(&data, |db| {
        // Garbage over one of its b-tree pages (the schema, on page 1, stays readable).
        let mut bytes = std::fs::read(db).expect("read");
        bytes[4096 * 20 + 100..4096 * 20 + 612].fill(0xff);
        std::fs::write(db, bytes).expect("write");
    });
    let line = refusal(&data).await;
    assert!(
        line.contains("the existing daemon's tables, but the file is damaged"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_of_a_newer_existing_daemon_is_refused_and_left_untouched() {
    let dir = test_dir("takeover-newer");
    let data = dir.path().join("data");
    damaged_copy(&data, |db| {
        open(db)
            .batch_execute("ALTER TABLE runs ADD COLUMN priority INTEGER;")
            .expect("alter");
    });
    let line = refusal(&data).await;
    assert!(line.contains("runs has unknown columns priority"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_of_the_existing_daemons_tables_are_refused_and_left_untouched() {
    let dir = test_dir("takeover-half");
    let data = dir.path().join("data");
    damaged_copy(&data, |db| {
        open(db)
            .batch_execute("DROP TABLE artifacts; DROP TABLE events;")
            .expect("drop");
    });
    let line = refusal(&data).await;
    assert!(
        line.contains("found the existing daemon's tables runs, steps but not events, artifacts"),
        "{line}"
    );
}
