//! Verification commands: pass, fail, timeout and the runner notes they produce.

use super::*;
use crate::exec::group::group_alive;
use crate::exec::test_support::{test_env, wait_until};
use nix::unistd::Pid;
use std::sync::{Arc, Mutex};

fn request(dir: &Path, cmds: &[&str]) -> VerifyRequest {
    VerifyRequest {
        cmds: cmds.iter().map(|c| c.to_string()).collect(),
        cwd: dir.to_path_buf(),
        env: test_env(),
        timeout: None,
        grace: Duration::from_secs(2),
        log: dir.join("iter-01-verify.log"),
    }
}

async fn verify(req: &VerifyRequest) -> VerifyResult {
    run_verification(req, &CancellationToken::new(), |_| {})
        .await
        .unwrap()
}

#[tokio::test]
async fn passing_commands_pass_and_are_logged_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let req = request(dir.path(), &["echo one", "printf two", "true"]);
    let result = verify(&req).await;
    assert!(result.passed);
    assert_eq!(result.runner_notes, None);
    assert_eq!(result.commands.len(), 3);
    assert_eq!(
        std::fs::read_to_string(&req.log).unwrap(),
        "$ echo one\none\n[exit 0]\n$ printf two\ntwo\n[exit 0]\n$ true\n[exit 0]\n"
    );
}

#[tokio::test]
async fn no_commands_is_an_immediate_pass() {
    let dir = tempfile::tempdir().unwrap();
    let result = verify(&request(dir.path(), &[])).await;
    assert!(result.passed && result.commands.is_empty() && result.runner_notes.is_none());
}

#[tokio::test]
async fn every_command_runs_after_a_failure_and_the_notes_hold_the_failures() {
    let dir = tempfile::tempdir().unwrap();
    let req = request(
        dir.path(),
        &[
            "echo out; echo err >&2; exit 2",
            "echo fine",
            "seq 1 200; exit 1",
            "echo only-err >&2; false",
        ],
    );
    let result = verify(&req).await;
    assert!(!result.passed);
    let exits: Vec<Exit> = result.commands.iter().map(|c| c.exit).collect();
    assert_eq!(
        exits,
        vec![Exit::Code(2), Exit::Code(0), Exit::Code(1), Exit::Code(1)]
    );
    let seq_tail: String = (81..=200).map(|i| format!("{i}\n")).collect();
    let expected = format!(
        "Runner detected failing verification.\n\n\
         Read this failure context carefully and fix it before doing new plan work:\n\n\
         --- FAILED: echo out; echo err >&2; exit 2 (exit 2) ---\nout\n\n--- STDERR ---\nerr\n\n\
         --- FAILED: seq 1 200; exit 1 (exit 1) ---\n{seq_tail}\n\
         --- FAILED: echo only-err >&2; false (exit 1) ---\nonly-err\n\n"
    );
    assert_eq!(result.runner_notes.as_deref(), Some(expected.as_str()));
    let log = std::fs::read_to_string(&req.log).unwrap();
    assert!(log.contains("$ echo fine\nfine\n[exit 0]\n"));
    assert!(log.contains("\n200\n[exit 1]\n"));
}

#[tokio::test]
async fn a_timed_out_command_is_a_failed_command_and_the_notes_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut req = request(dir.path(), &["echo slow; sleep 1000", "echo after"]);
    req.timeout = Some(Duration::from_millis(300));
    req.grace = Duration::from_millis(300);
    let result = verify(&req).await;
    assert!(!result.passed);
    assert_eq!(result.commands[0].exit, Exit::TimedOut);
    assert!(result.commands[1].passed(), "later commands still run");
    let notes = result.runner_notes.unwrap();
    assert!(notes
        .contains("--- FAILED: echo slow; sleep 1000 (timed out after 0.3 seconds) ---\nslow\n"));
    let log = std::fs::read_to_string(&req.log).unwrap();
    assert!(log.contains("slow\n[timed out after 0.3 seconds]\n"));
}

#[tokio::test]
async fn cancellation_stops_verification_and_kills_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let req = request(dir.path(), &["sleep 1000 & sleep 1000", "echo never"]);
    let cancel = CancellationToken::new();
    let pgid = Arc::new(Mutex::new(None));
    let seen = pgid.clone();
    let err = run_verification(&req, &cancel, |p| {
        *seen.lock().unwrap() = Some(p);
        cancel.cancel();
    })
    .await
    .unwrap_err();
    assert!(matches!(err, VerifyError::Cancelled));
    let pgid = Pid::from_raw(pgid.lock().unwrap().unwrap() as i32);
    assert!(wait_until(req.grace, || !group_alive(pgid)).await);
    assert!(!std::fs::read_to_string(&req.log).unwrap().contains("never"));
}
