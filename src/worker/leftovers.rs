//! What a worker process leaves behind if it dies: the pid files of its steps' process groups
//! (written while a step's agent or verify commands run) and the steps' directories. A
//! restarted worker kills those groups and removes the directories before it claims
//! (`runner.rs`); the phases (`phases.rs`) record and clear the pid files.

use std::path::{Path, PathBuf};

fn pid_dir(work_dir: &Path) -> PathBuf {
    work_dir.join("pids")
}

/// Remembers the process group of a running step.
pub fn record_pgid(work_dir: &Path, step_id: &str, pgid: i32) {
    let dir = pid_dir(work_dir);
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(step_id), pgid.to_string());
}

/// Forgets the process group of a finished step.
pub fn clear_pgid(work_dir: &Path, step_id: &str) {
    let _ = std::fs::remove_file(pid_dir(work_dir).join(step_id));
}

/// Kills the process groups a previous process of this worker left running, and removes the
/// step directories it left (their results were never sent, or were sent already).
pub fn kill_leftovers(work_dir: &Path) {
    match std::fs::remove_dir_all(work_dir.join("steps")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(error = %e, "cannot remove the step directories of a previous run")
        }
        _ => {}
    }
    let Ok(entries) = std::fs::read_dir(pid_dir(work_dir)) else {
        return;
    };
    for e in entries.flatten() {
        if let Some(pgid) = std::fs::read_to_string(e.path())
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            if pgid > 1 {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pgid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                tracing::warn!(pgid, "killed a process group left by a previous run");
            }
        }
        let _ = std::fs::remove_file(e.path());
    }
}
