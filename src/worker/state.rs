//! What the slots of one worker process share: its settings ([`RunnerConfig`]), the control
//! plane, the steps it is executing ([`Active`], keyed by step and lease epoch), and the drain
//! and stop signals. The leaf of `worker/`: every other file of the wing may read it; only
//! the runner (`runner.rs`) creates it.

use crate::artifacts::ArtifactStore;
use crate::control_plane::ControlPlane;
use crate::exec::group::signal_group;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How a worker process runs steps.
#[derive(Clone)]
pub struct RunnerConfig {
    pub work_dir: PathBuf,
    pub slots: u32,
    pub kill_grace: Duration,
    pub heartbeat_interval: Duration,
    /// Clones unused for longer are removed at start (None: kept).
    pub clone_keep: Option<Duration>,
    /// And again this often while the worker runs (None: only at start).
    pub clone_sweep_every: Option<Duration>,
    /// Environment variables passed to agents (`PREFIX_*` globs).
    pub agent_env: Vec<String>,
    /// Upload artifacts straight to this store instead of through the controller.
    pub direct_store: Option<ArtifactStore>,
    /// How git runs' clones are fetched (credentials, host keys, retries).
    pub remotes: crate::workspace::Remotes,
    /// The worker's own lease clock: how long a lease lasts after the last renewal the worker
    /// knows of before the controller may hand its step to another worker (None: no clock; a
    /// single host's runners live and die with their controller).
    pub lease_clock: Option<Duration>,
}

/// A step this process is executing.
pub struct Active {
    pub step_id: String,
    pub run_id: String,
    pub epoch: i64,
    /// Fired to kill the step's process group.
    pub cancel: CancellationToken,
    /// The lease is gone: write nothing more.
    pub lost: AtomicBool,
    /// Drain: give the lease back instead of completing.
    pub handed_back: AtomicBool,
    /// The step's work is over and its completion is being sent (or was accepted, which
    /// drops the lease): the completion's answer, not a heartbeat, says whether it counted.
    pub completing: AtomicBool,
    /// The process group of the command the step runs now (agent or verify), and whether the
    /// lease clock stopped it.
    group: Mutex<Group>,
    /// The last moment the lease is known to have been renewed (the claim's answer, or the
    /// sending of a heartbeat the controller answered with a renewal).
    renewed: Mutex<Instant>,
}

#[derive(Default)]
struct Group {
    pgid: Option<Pid>,
    frozen: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Active {
    fn new(step_id: &str, run_id: &str, epoch: i64) -> Active {
        Active {
            step_id: step_id.into(),
            run_id: run_id.into(),
            epoch,
            cancel: CancellationToken::new(),
            lost: AtomicBool::new(false),
            handed_back: AtomicBool::new(false),
            completing: AtomicBool::new(false),
            group: Mutex::new(Group::default()),
            renewed: Mutex::new(Instant::now()),
        }
    }

    /// The step's lease was lost or handed back: its results are not to be sent.
    pub fn is_abandoned(&self) -> bool {
        self.lost.load(Ordering::Acquire) || self.handed_back.load(Ordering::Acquire)
    }

    /// The lease is gone (the controller said `stop`, refused a write as stale, or forgot this
    /// worker): the step's process group is killed at once (no grace: its work is discarded,
    /// and another worker may be running the step already) and nothing more is written.
    pub fn lose(&self, why: &str) {
        if !self.lost.swap(true, Ordering::AcqRel) {
            tracing::warn!(run_id = %self.run_id, step_id = %self.step_id, lease_epoch = self.epoch,
                reason = why, "lease lost: killing the step and discarding its results");
        }
        // Cancelled first, so that the command's runner reads the kill as a cancellation and
        // starts nothing after it.
        self.cancel.cancel();
        let g = lock(&self.group);
        if let Some(pgid) = g.pgid {
            signal_group(pgid, Signal::SIGKILL);
        }
    }

    /// A command of the step started in group `pgid`. A lease lost or run out meanwhile
    /// applies to it at once.
    pub fn group_started(&self, pgid: u32) {
        let pgid = Pid::from_raw(pgid as i32);
        let mut g = lock(&self.group);
        g.pgid = Some(pgid);
        if self.lost.load(Ordering::Acquire) {
            signal_group(pgid, Signal::SIGKILL);
        } else if g.frozen {
            signal_group(pgid, Signal::SIGSTOP);
        }
    }

    /// The step's command ended (its group is gone or being killed by its runner).
    pub fn group_ended(&self) {
        lock(&self.group).pgid = None;
    }

    /// The controller renewed the lease in answer to a request sent at `at` (the lease clock
    /// lets a stopped group go on at its next tick).
    pub fn renewed(&self, at: Instant) {
        let mut r = lock(&self.renewed);
        *r = (*r).max(at);
    }

    /// The lease clock: once `period` has passed since the last renewal the worker knows of,
    /// the controller may have given the step to another worker, so the step's processes are
    /// stopped (SIGSTOP: they touch the workspace no more) until the controller renews the
    /// lease (they go on: SIGCONT) or says it is gone (they are killed, see [`Active::lose`]).
    pub fn check_clock(&self, period: Duration) {
        let due = lock(&self.renewed).elapsed() >= period;
        let mut g = lock(&self.group);
        if self.lost.load(Ordering::Acquire) || self.completing.load(Ordering::Acquire) {
            return;
        }
        if due == g.frozen {
            return;
        }
        g.frozen = due;
        let signal = if due {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        };
        if let Some(pgid) = g.pgid {
            signal_group(pgid, signal);
        }
        if due {
            tracing::warn!(run_id = %self.run_id, step_id = %self.step_id, lease_epoch = self.epoch,
                "lease clock ran out before a renewal: the step's processes are stopped until the controller answers");
        } else {
            tracing::info!(run_id = %self.run_id, step_id = %self.step_id,
                "lease renewed: the step's processes go on");
        }
    }
}

/// State shared by the slots and the heartbeat loop.
pub struct Shared {
    pub plane: Arc<dyn ControlPlane>,
    pub cfg: RunnerConfig,
    /// Keyed by step id and epoch: an abandoned attempt may still be winding down when the
    /// same step is claimed again.
    active: Mutex<HashMap<(String, i64), Arc<Active>>>,
    pub draining: AtomicBool,
    /// Slots stop claiming when this fires.
    pub stop_claims: CancellationToken,
    /// Slots whose claim loop still runs (one may have a long poll in flight).
    claiming: AtomicUsize,
    /// Signalled whenever a step ends or a slot stops claiming.
    pub step_ended: Notify,
    /// A step prepares its clone under a read guard, a sweep of idle clones runs under the
    /// write guard (see `workdir::sweep_clones`).
    pub clones: tokio::sync::RwLock<()>,
}

impl Shared {
    /// The state of a process whose `cfg.slots` claim loops are about to start.
    pub fn new(plane: Arc<dyn ControlPlane>, cfg: RunnerConfig) -> Shared {
        let slots = cfg.slots as usize;
        Shared {
            plane,
            cfg,
            active: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            stop_claims: CancellationToken::new(),
            claiming: AtomicUsize::new(slots),
            step_ended: Notify::new(),
            clones: tokio::sync::RwLock::new(()),
        }
    }

    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i64), Arc<Active>>> {
        lock(&self.active)
    }

    pub fn register(&self, step_id: &str, run_id: &str, epoch: i64) -> Arc<Active> {
        let a = Arc::new(Active::new(step_id, run_id, epoch));
        self.active()
            .insert((step_id.to_string(), epoch), a.clone());
        a
    }

    pub fn unregister(&self, step_id: &str, epoch: i64) {
        self.active().remove(&(step_id.to_string(), epoch));
        self.step_ended.notify_waiters();
    }

    /// The steps running now, by step id.
    pub fn snapshot(&self) -> Vec<(String, Arc<Active>)> {
        self.active()
            .iter()
            .map(|((id, _), v)| (id.clone(), v.clone()))
            .collect()
    }

    /// The runs this process is executing steps of.
    pub fn active_runs(&self) -> HashSet<String> {
        self.active().values().map(|a| a.run_id.clone()).collect()
    }

    pub fn is_idle(&self) -> bool {
        self.active().is_empty()
    }

    /// Whether this worker takes new steps: not stopping, not draining.
    pub fn claims_wanted(&self) -> bool {
        !self.stop_claims.is_cancelled() && !self.draining.load(Ordering::Acquire)
    }

    /// A slot's claim loop ended.
    pub fn claim_loop_ended(&self) {
        self.claiming.fetch_sub(1, Ordering::AcqRel);
        self.step_ended.notify_waiters();
    }

    /// How many slots still claim.
    pub fn claiming(&self) -> usize {
        self.claiming.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::group::group_alive;
    use std::process::{Child, Command};
    use tokio::time::timeout;

    /// `sh` in a process group of its own, ignoring SIGTERM like its `sleep` child.
    fn stubborn_group() -> Child {
        use std::os::unix::process::CommandExt;
        Command::new("sh")
            .args(["-c", "trap '' TERM; sleep 1000 & wait"])
            .process_group(0)
            .spawn()
            .expect("spawn sh")
    }

    /// The state letter of `/proc/<pid>/stat` (`T` = stopped).
    fn state(pid: u32) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .next()?
            .chars()
            .next()
    }

    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let polled = async {
            while !cond() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        timeout(Duration::from_secs(10), polled)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    }

    #[tokio::test]
    async fn a_lost_lease_kills_the_group_at_once_even_when_it_ignores_sigterm() {
        let mut child = stubborn_group();
        let pgid = child.id();
        let a = Active::new("s1", "r1", 1);
        a.group_started(pgid);
        a.lose("test");
        assert!(a.cancel.is_cancelled() && a.is_abandoned());
        until("the group to die", || {
            !group_alive(Pid::from_raw(pgid as i32))
        })
        .await;
        let status = child.wait().expect("reaped");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
    }

    #[tokio::test]
    async fn a_group_started_after_the_lease_was_lost_is_killed_at_once() {
        let a = Active::new("s1", "r1", 1);
        a.lose("test");
        let mut child = stubborn_group();
        let pgid = child.id();
        a.group_started(pgid);
        until("the group to die", || {
            !group_alive(Pid::from_raw(pgid as i32))
        })
        .await;
        child.wait().expect("reaped");
    }

    #[tokio::test]
    async fn the_lease_clock_stops_the_group_until_a_renewal_and_a_loss_kills_it() {
        let mut child = stubborn_group();
        let pid = child.id();
        let a = Active::new("s1", "r1", 1);
        a.group_started(pid);
        let period = Duration::from_millis(200);
        a.check_clock(period);
        assert_ne!(state(pid), Some('T'), "stopped before its period ran out");
        until("the period to run out and the group to stop", || {
            a.check_clock(period);
            state(pid) == Some('T')
        })
        .await;
        a.renewed(Instant::now());
        a.check_clock(period);
        until("the renewed group to go on", || state(pid) != Some('T')).await;
        // Stopped again, then lost: SIGKILL ends a stopped group too.
        until("the group to stop again", || {
            a.check_clock(period);
            state(pid) == Some('T')
        })
        .await;
        a.lose("test");
        until("the group to die", || {
            !group_alive(Pid::from_raw(pid as i32))
        })
        .await;
        child.wait().expect("reaped");
    }

    #[tokio::test]
    async fn a_group_started_while_the_clock_has_run_out_starts_stopped() {
        let a = Active::new("s1", "r1", 1);
        a.check_clock(Duration::ZERO);
        let mut child = stubborn_group();
        let pid = child.id();
        a.group_started(pid);
        until("the new group to be stopped", || state(pid) == Some('T')).await;
        a.lose("test");
        until("the group to die", || {
            !group_alive(Pid::from_raw(pid as i32))
        })
        .await;
        child.wait().expect("reaped");
    }
}
