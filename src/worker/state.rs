//! What the slots of one worker process share: its settings ([`RunnerConfig`]), the control
//! plane, the steps it is executing ([`Active`], keyed by step and lease epoch), and the drain
//! and stop signals. The leaf of `worker/`: every other file of the wing may read it; only
//! the runner (`runner.rs`) creates it.

use crate::artifacts::ArtifactStore;
use crate::control_plane::ControlPlane;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
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
}

/// A step this process is executing.
pub struct Active {
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
}

impl Active {
    /// The step's lease was lost or handed back: its results are not to be sent.
    pub fn is_abandoned(&self) -> bool {
        self.lost.load(Ordering::Acquire) || self.handed_back.load(Ordering::Acquire)
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
        match self.active.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    pub fn register(&self, step_id: &str, run_id: &str, epoch: i64) -> Arc<Active> {
        let a = Arc::new(Active {
            run_id: run_id.into(),
            epoch,
            cancel: CancellationToken::new(),
            lost: AtomicBool::new(false),
            handed_back: AtomicBool::new(false),
            completing: AtomicBool::new(false),
        });
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
