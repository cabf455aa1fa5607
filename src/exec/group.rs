//! Process groups: signalling a step's whole group, telling whether it still has live
//! members, and stopping it (SIGTERM, grace, SIGKILL). Used by the process runner (`process.rs`); the
//! liveness check is public so callers (and tests) can check that a stopped step left nothing.

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::io;
use std::time::Duration;
use tokio::process::Child;
use tokio::time::Instant;

const GROUP_POLL: Duration = Duration::from_millis(20);

/// SIGTERM to the group; the group gets `grace` to exit; then SIGKILL to the group. Returns
/// once the direct child is reaped.
pub(crate) async fn stop_group(child: &mut Child, pgid: Pid, grace: Duration) -> io::Result<()> {
    signal_group(pgid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    if let Ok(status) = tokio::time::timeout_at(deadline, child.wait()).await {
        status?;
        // The leader is gone; its children may still be shutting down.
        while group_alive(pgid) && Instant::now() < deadline {
            tokio::time::sleep(GROUP_POLL).await;
        }
        signal_group(pgid, Signal::SIGKILL);
        return Ok(());
    }
    signal_group(pgid, Signal::SIGKILL);
    child.wait().await.map(drop)
}

/// Sends `signal` to every process of the group.
pub fn signal_group(pgid: Pid, signal: Signal) {
    // ESRCH (group already gone) is the expected outcome, not an error.
    let _ = killpg(pgid, signal);
}

/// Whether the group has a member that is not a zombie.
///
/// `kill(-pgid, 0)` alone also counts zombies, and an orphaned zombie lives until init reaps
/// it, which some container inits do only now and then; on Linux `/proc` tells them apart.
pub fn group_alive(pgid: Pid) -> bool {
    if matches!(killpg(pgid, None), Err(Errno::ESRCH)) {
        return false;
    }
    live_member_in_proc(pgid).unwrap_or(true)
}

#[cfg(target_os = "linux")]
fn live_member_in_proc(pgid: Pid) -> Option<bool> {
    let entries = std::fs::read_dir("/proc").ok()?;
    Some(entries.flatten().any(|entry| {
        let is_pid = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
        is_pid && is_live_member(&entry.path().join("stat"), pgid)
    }))
}

#[cfg(not(target_os = "linux"))]
fn live_member_in_proc(_pgid: Pid) -> Option<bool> {
    None
}

/// `/proc/<pid>/stat` is `pid (comm) state ppid pgrp …`; comm may hold spaces and parens.
#[cfg(target_os = "linux")]
fn is_live_member(stat: &std::path::Path, pgid: Pid) -> bool {
    let Ok(text) = std::fs::read_to_string(stat) else {
        return false;
    };
    let Some((_, rest)) = text.rsplit_once(')') else {
        return false;
    };
    let mut fields = rest.split_whitespace();
    let state = fields.next();
    let pgrp = fields.nth(1).and_then(|p| p.parse::<i32>().ok());
    !matches!(state, Some("Z") | Some("X") | None) && pgrp == Some(pgid.as_raw())
}

/// Kills the group if the command's owner goes away (its future is dropped) mid-run.
pub(crate) struct GroupGuard(pub(crate) Option<Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            signal_group(pgid, Signal::SIGKILL);
        }
    }
}
