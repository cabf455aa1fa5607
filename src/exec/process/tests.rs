//! Process groups: spawn, timeout, and cancel as TERM, grace, KILL of the whole group.

use super::*;
use crate::exec::group::group_alive;
use crate::exec::test_support::{script, test_env, wait_until};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant as StdInstant;

fn spec(dir: &Path, program: &str, args: &[&str]) -> CommandSpec {
    CommandSpec {
        program: program.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        cwd: dir.to_path_buf(),
        env: test_env(),
        timeout: None,
        grace: Duration::from_secs(2),
    }
}

/// The error of a run whose sink has no `Debug`.
fn expect_err<S>(result: Result<(Exit, S), ProcessError>) -> ProcessError {
    match result {
        Ok((exit, _)) => panic!("expected an error, got {exit:?}"),
        Err(e) => e,
    }
}

type Captured = Arc<Mutex<(Vec<u8>, Vec<u8>)>>;

/// A sink that collects both streams where the test can look while the command runs.
fn collector() -> (Captured, impl OutputSink) {
    let captured: Captured = Arc::default();
    let shared = captured.clone();
    let sink = move |stream: Stream, data: &[u8]| {
        let mut c = shared.lock().unwrap();
        match stream {
            Stream::Stdout => c.0.extend_from_slice(data),
            Stream::Stderr => c.1.extend_from_slice(data),
        }
        Ok(())
    };
    (captured, sink)
}

fn stdout_of(c: &Captured) -> String {
    String::from_utf8_lossy(&c.lock().unwrap().0).into_owned()
}

/// A script whose group holds several `sleep 1000`: background children and a foreground one.
const SLEEPERS: &str = "sleep 1000 &\nsleep 1000 &\necho ready\nsleep 1000\n";

#[tokio::test]
async fn both_streams_reach_the_sink_and_the_exit_code_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (captured, sink) = collector();
    let s = spec(dir.path(), "sh", &["-c", "echo out; echo err >&2; exit 3"]);
    let (exit, _) = run(&s, sink, &CancellationToken::new(), |_| {})
        .await
        .unwrap();
    assert_eq!(exit, Exit::Code(3));
    let c = captured.lock().unwrap();
    assert_eq!(
        (c.0.as_slice(), c.1.as_slice()),
        (&b"out\n"[..], &b"err\n"[..])
    );
}

#[tokio::test]
async fn the_environment_is_exactly_the_given_one_and_the_cwd_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let (captured, sink) = collector();
    let mut s = spec(dir.path(), "sh", &["-c", "echo \"$HOME|$FOO|$(pwd)\""]);
    s.env.push(("FOO".into(), "bar".into()));
    run(&s, sink, &CancellationToken::new(), |_| {})
        .await
        .unwrap();
    let cwd = dir.path().canonicalize().unwrap();
    assert_eq!(stdout_of(&captured), format!("|bar|{}\n", cwd.display()));
}

#[tokio::test]
async fn a_missing_program_is_not_found_and_a_missing_cwd_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path(), "no-such-program-loopd-test", &[]);
    let err = expect_err(
        run(
            &s,
            |_: Stream, _: &[u8]| Ok(()),
            &CancellationToken::new(),
            |_| {},
        )
        .await,
    );
    assert!(
        matches!(err, ProcessError::NotFound { ref program } if program == "no-such-program-loopd-test")
    );
    let s = spec(&dir.path().join("gone"), "sh", &["-c", "true"]);
    let err = expect_err(
        run(
            &s,
            |_: Stream, _: &[u8]| Ok(()),
            &CancellationToken::new(),
            |_| {},
        )
        .await,
    );
    assert!(matches!(err, ProcessError::MissingCwd { .. }));
}

#[tokio::test]
async fn a_signal_death_is_reported_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path(), "sh", &["-c", "kill -9 $$"]);
    let (exit, _) = run(
        &s,
        |_: Stream, _: &[u8]| Ok(()),
        &CancellationToken::new(),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(exit, Exit::Signal(9));
}

#[tokio::test]
async fn a_timeout_stops_the_whole_group_even_when_it_ignores_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let path = script(
        dir.path(),
        "stubborn.sh",
        &format!("trap '' TERM\n{SLEEPERS}"),
    );
    let mut s = spec(dir.path(), "sh", &[path.to_str().unwrap()]);
    s.timeout = Some(Duration::from_millis(300));
    s.grace = Duration::from_millis(300);
    let pgid = Arc::new(Mutex::new(None));
    let seen = pgid.clone();
    let started = StdInstant::now();
    let (exit, _) = run(
        &s,
        |_: Stream, _: &[u8]| Ok(()),
        &CancellationToken::new(),
        move |p| *seen.lock().unwrap() = Some(p),
    )
    .await
    .unwrap();
    assert_eq!(exit, Exit::TimedOut);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let pgid = Pid::from_raw(pgid.lock().unwrap().unwrap() as i32);
    assert!(
        wait_until(s.grace, || !group_alive(pgid)).await,
        "group {pgid} still alive"
    );
}

#[tokio::test]
async fn cancellation_stops_the_whole_group_within_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let path = script(dir.path(), "sleepers.sh", SLEEPERS);
    let s = spec(dir.path(), "sh", &[path.to_str().unwrap()]);
    let (captured, sink) = collector();
    let cancel = CancellationToken::new();
    let pgid = Arc::new(Mutex::new(None));
    let seen = pgid.clone();
    let task = {
        let (s, cancel) = (s.clone(), cancel.clone());
        tokio::spawn(async move {
            run(&s, sink, &cancel, move |p| *seen.lock().unwrap() = Some(p)).await
        })
    };
    assert!(wait_until(Duration::from_secs(5), || stdout_of(&captured) == "ready\n").await);
    let pgid = Pid::from_raw(pgid.lock().unwrap().unwrap() as i32);
    assert!(group_alive(pgid));
    cancel.cancel();
    let (exit, _) = task.await.unwrap().unwrap();
    assert_eq!(exit, Exit::Cancelled);
    assert!(
        wait_until(s.grace, || !group_alive(pgid)).await,
        "group {pgid} still alive"
    );
}

#[tokio::test]
async fn nothing_starts_once_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path(), "sh", &["-c", "touch started"]);
    let cancel = CancellationToken::new();
    cancel.cancel();
    let mut spawned = false;
    let (exit, _) = run(
        &s,
        |_: Stream, _: &[u8]| Ok(()),
        &cancel,
        |_| spawned = true,
    )
    .await
    .unwrap();
    assert_eq!(exit, Exit::Cancelled);
    assert!(!spawned && !dir.path().join("started").exists());
}

/// A lost lease cancels, then kills the group itself (no grace): the command reads as
/// cancelled, not as a signal death its caller would retry or follow with the next command.
#[tokio::test]
async fn a_group_killed_by_whoever_cancelled_it_reads_as_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let path = script(dir.path(), "sleepers.sh", SLEEPERS);
    let mut s = spec(dir.path(), "sh", &[path.to_str().unwrap()]);
    s.grace = Duration::from_secs(60);
    let (captured, sink) = collector();
    let cancel = CancellationToken::new();
    let pgid = Arc::new(Mutex::new(None));
    let seen = pgid.clone();
    let task = {
        let (s, cancel) = (s.clone(), cancel.clone());
        tokio::spawn(async move {
            run(&s, sink, &cancel, move |p| *seen.lock().unwrap() = Some(p)).await
        })
    };
    assert!(wait_until(Duration::from_secs(5), || stdout_of(&captured) == "ready\n").await);
    let pgid = Pid::from_raw(pgid.lock().unwrap().unwrap() as i32);
    cancel.cancel();
    signal_group(pgid, NixSignal::SIGKILL);
    let started = StdInstant::now();
    let (exit, _) = task.await.unwrap().unwrap();
    assert_eq!(exit, Exit::Cancelled);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "waited for the grace"
    );
}

#[tokio::test]
async fn background_jobs_left_behind_are_killed_when_the_command_exits() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path(), "sh", &["-c", "sleep 1000 & echo started"]);
    let pgid = Arc::new(Mutex::new(None));
    let seen = pgid.clone();
    let started = StdInstant::now();
    let (exit, _) = run(
        &s,
        |_: Stream, _: &[u8]| Ok(()),
        &CancellationToken::new(),
        move |p| *seen.lock().unwrap() = Some(p),
    )
    .await
    .unwrap();
    assert_eq!(exit, Exit::Code(0));
    // The straggler held the stdout pipe: without the kill this would wait for DRAIN_TIMEOUT.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    let pgid = Pid::from_raw(pgid.lock().unwrap().unwrap() as i32);
    assert!(wait_until(Duration::from_secs(2), || !group_alive(pgid)).await);
}

#[tokio::test]
async fn a_failing_sink_is_reported_after_the_command_ends() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path(), "sh", &["-c", "echo hi"]);
    let sink = |_: Stream, _: &[u8]| Err(io::Error::other("disk full"));
    let err = expect_err(run(&s, sink, &CancellationToken::new(), |_| {}).await);
    assert!(err.to_string().contains("disk full"), "{err}");
}

#[test]
fn durations_read_as_seconds() {
    assert_eq!(seconds_text(Duration::from_secs(600)), "600 seconds");
    assert_eq!(seconds_text(Duration::from_millis(300)), "0.3 seconds");
    assert_eq!(seconds_text(Duration::from_millis(1250)), "1.25 seconds");
}

#[cfg(target_os = "linux")]
#[test]
fn a_child_dies_with_the_thread_that_spawned_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path(), "sleep", &["1000"]);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (pid_tx, pid_rx) = tokio::sync::oneshot::channel();
            let sink = |_: Stream, _: &[u8]| Ok(());
            let cancel = CancellationToken::new();
            let mut running = Box::pin(run(&s, sink, &cancel, move |p| {
                let _ = pid_tx.send(p);
            }));
            tokio::select! {
                _ = &mut running => panic!("sleep 1000 ended"),
                pid = pid_rx => tx.send(pid.unwrap()).unwrap(),
            }
            // Leak the run so neither its guard nor kill_on_drop can kill the child: only the
            // parent-death signal is left to do it when this thread ends.
            std::mem::forget(running);
        });
        rt.shutdown_background();
    });
    let pid = rx.recv().unwrap();
    let pgid = Pid::from_raw(pid as i32);
    let gone = std::time::Instant::now() + Duration::from_secs(5);
    while group_alive(pgid) {
        assert!(
            std::time::Instant::now() < gone,
            "child {pid} outlived its parent thread"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
