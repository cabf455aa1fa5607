//! The other controllers on the same database. Controllers are active-active: each serves the
//! whole runs API and worker API, and Postgres is the one place of truth. Two things still
//! need a word between them, and both go through one dedicated Postgres session per
//! controller (`db::listen`; no polling loop):
//!
//! - Notices (LISTEN/NOTIFY on one channel): a step queued through one controller wakes a
//!   worker long-polling on another ([`Notice::Queued`], [`Notice::WakeAll`]), and a worker
//!   another controller marked offline or revoked is dropped from this one's cache
//!   ([`Notice::Worker`]). Each controller skips its own notices. When the session is lost
//!   and opened again, notices may have been missed: every waiter is woken and every cached
//!   worker dropped ([`Notice::Reset`]).
//! - The duties only one controller may run at a time — the lease sweep, the offline check,
//!   the scheduler's reconciliation — belong to whoever holds a session-level advisory lock.
//!   Every controller that does not hold it tries every [`TRY_EVERY`] (and at once when the
//!   holder says it let go); Postgres releases it when the holder's session ends, however the
//!   holder died, so another takes over within about a second. Taking over gives every
//!   online worker a fresh heartbeat and its leases a fresh period (the new holder does not
//!   know how long the duties went undone), as a controller's start always did. Losing the
//!   session stops the duties at once. Each duty is idempotent under concurrency (judged and
//!   written in one statement), so two holders overlapping for a moment — a partition that the
//!   old one has not noticed yet — do no harm.
//!
//! - Work on one run that must not be done by two controllers at once — finishing it (merge,
//!   push, final artifacts), making its worktree — is held under a session-level advisory lock
//!   keyed by the run ([`Peers::hold`]), taken on the same session: released by
//!   [`Peers::let_go`], or by Postgres when the holder's session ends. Whoever takes it next
//!   reads the run again, and finds the work done.
//!
//! With SQLite (role single) there are no peers: [`Peers::alone`] holds the duties for good.
//! A leaf of `actors/`, like `events` and `ticks`: `app` builds it and wires what a notice
//! does; the owners publish through it and ask it whether they hold the duties.

use crate::db::listen::{literal, Notice as Raw, Session};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// The one channel of the notices.
const CHANNEL: &str = "loopd_peers";
/// The advisory lock of the duties ("loopd" in ASCII).
const DUTIES_LOCK: i64 = 465_726_042_212;
/// How often a controller that does not hold the duties tries to take them.
pub const TRY_EVERY: Duration = Duration::from_millis(500);
/// A statement on the session that takes longer means the database is gone.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// What one controller tells the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A step needing `labels` was queued (for `preferred` first).
    Queued {
        labels: String,
        preferred: Option<String>,
    },
    /// Many steps may have become claimable: wake every waiter.
    WakeAll,
    /// A worker's row changed (offline, revoked): drop it from caches.
    Worker(String),
    /// The run changed (events, steps, status): wake its live streams.
    Run(String),
    /// Output of the run's step was stored from byte `byte` on.
    Output {
        run_id: String,
        step_id: String,
        byte: u64,
    },
    /// The duties' holder let go: try to take them now.
    DutiesFree,
    /// Notices may have been missed (the session was opened again): wake every waiter and
    /// drop every cached worker. Never sent; raised locally.
    Reset,
}

impl Notice {
    fn encode(&self, node: &str) -> String {
        match self {
            Notice::Queued { labels, preferred } => format!(
                "q\t{node}\t{labels}\t{}",
                preferred.as_deref().unwrap_or("")
            ),
            Notice::WakeAll => format!("a\t{node}"),
            Notice::Worker(id) => format!("w\t{node}\t{id}"),
            Notice::Run(id) => format!("c\t{node}\t{id}"),
            Notice::Output {
                run_id,
                step_id,
                byte,
            } => format!("o\t{node}\t{run_id}\t{step_id}\t{byte}"),
            Notice::DutiesFree => format!("f\t{node}"),
            Notice::Reset => format!("r\t{node}"),
        }
    }

    /// The notice in `payload` and its sender.
    fn decode(payload: &str) -> Option<(Notice, &str)> {
        let mut f = payload.split('\t');
        let (kind, node) = (f.next()?, f.next()?);
        let n = match kind {
            "q" => Notice::Queued {
                labels: f.next()?.to_string(),
                preferred: f.next().filter(|p| !p.is_empty()).map(str::to_string),
            },
            "a" => Notice::WakeAll,
            "w" => Notice::Worker(f.next()?.to_string()),
            "c" => Notice::Run(f.next()?.to_string()),
            "o" => Notice::Output {
                run_id: f.next()?.to_string(),
                step_id: f.next()?.to_string(),
                byte: f.next()?.parse().ok()?,
            },
            "f" => Notice::DutiesFree,
            _ => return None,
        };
        Some((n, node))
    }
}

/// What a notice from another controller does here (wired by `app`).
pub type OnNotice = Arc<dyn Fn(Notice) + Send + Sync>;
/// What taking over the duties does first (wired by `app`).
pub type OnTakeOver =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>>>> + Send + Sync>;

/// Work on a run that one controller at a time may do (the advisory lock's first key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Finishing the run (merge, push, final artifacts, terminal status).
    Finish = 0x6c70_0001,
    /// Making the run's worktree.
    Prepare = 0x6c70_0002,
}

enum Cmd {
    Publish(String),
    /// Takes the lock of (hold, run) if it is free; answers whether it was taken.
    Hold(Hold, String, oneshot::Sender<bool>),
    LetGo(Hold, String),
    /// Let go of the duties and stop trying to take them (a stopping controller).
    Release(oneshot::Sender<()>),
}

/// This controller among its peers.
pub struct Peers {
    node: String,
    outbox: Option<mpsc::UnboundedSender<Cmd>>,
    holds: AtomicBool,
    /// Milliseconds the last take-over took from the moment the lock was free to this
    /// controller (for the log and the benchmark).
    pub took_over: AtomicU64,
    on_notice: Mutex<Option<OnNotice>>,
    on_take_over: Mutex<Option<OnTakeOver>>,
}

impl Peers {
    /// No peers (SQLite, role single): the duties are this process's for good.
    pub fn alone() -> Arc<Peers> {
        Arc::new(Peers {
            node: String::new(),
            outbox: None,
            holds: AtomicBool::new(true),
            took_over: AtomicU64::new(0),
            on_notice: Mutex::new(None),
            on_take_over: Mutex::new(None),
        })
    }

    /// The peers on the Postgres database at `url`. Wire [`on_notice`](Self::on_notice) and
    /// [`on_take_over`](Self::on_take_over), then [`PeersTask::spawn`] the task that keeps the
    /// session (opened again whenever it is lost) until the process ends.
    pub fn on_postgres(url: &str) -> (Arc<Peers>, PeersTask) {
        let (tx, rx) = mpsc::unbounded_channel();
        let peers = Arc::new(Peers {
            node: uuid::Uuid::new_v4().simple().to_string(),
            outbox: Some(tx),
            holds: AtomicBool::new(false),
            took_over: AtomicU64::new(0),
            on_notice: Mutex::new(None),
            on_take_over: Mutex::new(None),
        });
        let task = PeersTask {
            peers: peers.clone(),
            url: url.to_string(),
            rx,
        };
        (peers, task)
    }

    /// Whether this controller runs the duties now.
    pub fn holds_duties(&self) -> bool {
        self.holds.load(Ordering::Acquire)
    }

    /// Tells the other controllers (nothing when alone).
    pub fn publish(&self, n: Notice) {
        if let Some(tx) = &self.outbox {
            let _ = tx.send(Cmd::Publish(n.encode(&self.node)));
        }
    }

    pub fn on_notice(&self, f: OnNotice) {
        *self.on_notice.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    pub fn on_take_over(&self, f: OnTakeOver) {
        *self.on_take_over.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    fn notice(&self, n: Notice) {
        let f = self
            .on_notice
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(f) = f {
            f(n);
        }
    }

    /// Takes `what` of run `run_id` for this controller, unless another controller has it
    /// (or its lock cannot be asked for within a few seconds): then false, and the caller
    /// leaves the work to the holder (the scheduler's tick tries again later). Always true when
    /// alone. Within one process, callers keep their own guard: the lock is re-entrant.
    pub async fn hold(&self, what: Hold, run_id: &str) -> bool {
        let Some(tx) = &self.outbox else { return true };
        let (ack, answer) = oneshot::channel();
        if tx.send(Cmd::Hold(what, run_id.to_string(), ack)).is_err() {
            return false;
        }
        matches!(
            tokio::time::timeout(QUERY_TIMEOUT, answer).await,
            Ok(Ok(true))
        )
    }

    /// Lets go of what [`hold`](Self::hold) took.
    pub fn let_go(&self, what: Hold, run_id: &str) {
        if let Some(tx) = &self.outbox {
            let _ = tx.send(Cmd::LetGo(what, run_id.to_string()));
        }
    }

    /// Lets go of the duties (another controller takes them at once) and stops trying to take
    /// them: for a controller that is stopping.
    pub async fn release(&self) {
        let Some(tx) = &self.outbox else { return };
        let (ack, done) = oneshot::channel();
        if tx.send(Cmd::Release(ack)).is_ok() {
            let _ = tokio::time::timeout(QUERY_TIMEOUT, done).await;
        }
        self.holds.store(false, Ordering::Release);
    }
}

/// The task that keeps the session: started by [`PeersTask::spawn`].
pub struct PeersTask {
    peers: Arc<Peers>,
    url: String,
    rx: mpsc::UnboundedReceiver<Cmd>,
}

/// Why a session ended.
enum Ended {
    Lost(String),
    /// Every sender is gone: the process is stopping.
    Closed,
}

impl PeersTask {
    /// Runs the session on a thread of its own (with its own small runtime): a busy actor
    /// thread must not delay the answers that keep the duties, nor make a live session look
    /// lost. What a notice or a take-over does runs there too.
    pub fn spawn(self) -> std::io::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("loopd-peers".into())
            .spawn(move || rt.block_on(self.run()))?;
        Ok(())
    }

    /// Runs the session (opened again whenever it is lost) until the process stops.
    async fn run(mut self) {
        let mut contending = true;
        let mut pause = Duration::from_millis(100);
        loop {
            match self.session(&mut contending).await {
                Ended::Closed => return,
                Ended::Lost(e) => {
                    if self.peers.holds.swap(false, Ordering::AcqRel) {
                        tracing::warn!(error = %e, "lost the database session: the controller duties stop here");
                    } else {
                        tracing::warn!(error = %e, "lost the database session of the peers");
                    }
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    /// One session: listen, publish, contend for the duties, until it is lost.
    async fn session(&mut self, contending: &mut bool) -> Ended {
        let mut s = match Session::connect(&self.url).await {
            Ok(s) => s,
            Err(e) => return Ended::Lost(e.to_string()),
        };
        if let Err(e) = s.query(&format!("LISTEN {CHANNEL}"), QUERY_TIMEOUT).await {
            return Ended::Lost(e.to_string());
        }
        // Whatever was sent while no session listened is lost: look at everything again.
        self.peers.notice(Notice::Reset);
        let mut tick = tokio::time::interval(TRY_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut try_now = false;
            let step = tokio::select! {
                n = s.next_notice() => match n {
                    Ok(n) => { try_now = self.received(n); Ok(()) }
                    Err(e) => Err(e.to_string()),
                },
                cmd = self.rx.recv() => match cmd {
                    None => return Ended::Closed,
                    Some(Cmd::Publish(first)) => self.publish(&mut s, first).await,
                    Some(Cmd::Hold(what, run, ack)) => {
                        let r = hold(&mut s, what, &run, true).await;
                        let _ = ack.send(r.as_ref().is_ok_and(|got| *got));
                        r.map(|_| ())
                    }
                    Some(Cmd::LetGo(what, run)) => hold(&mut s, what, &run, false).await.map(|_| ()),
                    Some(Cmd::Release(ack)) => {
                        *contending = false;
                        let r = self.release(&mut s).await;
                        let _ = ack.send(());
                        r
                    }
                },
                _ = tick.tick() => { try_now = true; Ok(()) }
            };
            if let Err(e) = step {
                return Ended::Lost(e);
            }
            for n in s.received() {
                try_now |= self.received(n);
            }
            if try_now && *contending {
                if let Err(e) = self.contend(&mut s).await {
                    return Ended::Lost(e);
                }
            }
        }
    }

    /// Acts on a notice; returns whether it says to try for the duties now.
    fn received(&self, raw: Raw) -> bool {
        let Some((n, from)) = Notice::decode(&raw.payload) else {
            return false;
        };
        if from == self.peers.node {
            return false;
        }
        if n == Notice::DutiesFree {
            return true;
        }
        self.peers.notice(n);
        false
    }

    /// Sends `first` and whatever else waits to be published, in one statement. Holds asked
    /// for meanwhile are answered after it, in the order they came.
    async fn publish(&mut self, s: &mut Session, first: String) -> Result<(), String> {
        let mut all = vec![first];
        let mut release = None;
        let mut holds = Vec::new();
        while let Ok(cmd) = self.rx.try_recv() {
            match cmd {
                Cmd::Publish(p) => {
                    if !all.contains(&p) {
                        all.push(p)
                    }
                }
                Cmd::Hold(what, run, ack) => holds.push((what, run, Some(ack))),
                Cmd::LetGo(what, run) => holds.push((what, run, None)),
                Cmd::Release(ack) => {
                    release = Some(ack);
                    break;
                }
            }
        }
        let list: Vec<String> = all.iter().map(|p| literal(p)).collect();
        let sql = format!(
            "SELECT count(pg_notify('{CHANNEL}', p)) FROM unnest(ARRAY[{}]::text[]) AS p",
            list.join(",")
        );
        let mut r = s
            .query(&sql, QUERY_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        for (what, run, ack) in holds {
            let got = match &r {
                Ok(()) => hold(s, what, &run, ack.is_some()).await,
                Err(e) => Err(e.clone()),
            };
            if let Some(ack) = ack {
                let _ = ack.send(got.as_ref().is_ok_and(|g| *g));
            }
            if let Err(e) = got {
                r = Err(e);
            }
        }
        if let Some(ack) = release {
            // Handled as if it came next (the rare stop while notices are sent).
            let r2 = self.release(s).await;
            let _ = ack.send(());
            return r.and(r2);
        }
        r
    }

    /// Lets go of the duties, if held, and tells the others.
    async fn release(&mut self, s: &mut Session) -> Result<(), String> {
        if !self.peers.holds.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let free = literal(&Notice::DutiesFree.encode(&self.peers.node));
        let sql = format!(
            "SELECT pg_advisory_unlock({DUTIES_LOCK}); SELECT pg_notify('{CHANNEL}', {free})"
        );
        s.query(&sql, QUERY_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!("controller duties released");
        Ok(())
    }

    /// Takes the duties if they are free (and checks the session while holding them).
    async fn contend(&mut self, s: &mut Session) -> Result<(), String> {
        if self.peers.holds_duties() {
            s.query("SELECT 1", QUERY_TIMEOUT)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(());
        }
        let got = s
            .query(
                &format!("SELECT pg_try_advisory_lock({DUTIES_LOCK})"),
                QUERY_TIMEOUT,
            )
            .await
            .map_err(|e| e.to_string())?;
        if got.as_deref() != Some("t") {
            return Ok(());
        }
        let started = Instant::now();
        let hook = self
            .peers
            .on_take_over
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(hook) = hook {
            if let Err(e) = hook().await {
                // Not taken over: let go, and try again later.
                tracing::error!(error = %e, "cannot take over the controller duties");
                s.query(
                    &format!("SELECT pg_advisory_unlock({DUTIES_LOCK})"),
                    QUERY_TIMEOUT,
                )
                .await
                .map_err(|e| e.to_string())?;
                return Ok(());
            }
        }
        self.peers.holds.store(true, Ordering::Release);
        let ms = started.elapsed().as_millis() as u64;
        self.peers.took_over.store(ms, Ordering::Relaxed);
        tracing::info!(node = %self.peers.node, prepare_ms = ms, "controller duties taken");
        Ok(())
    }
}

/// Takes (`take`) or lets go of the advisory lock of `what` for run `run_id` on the session;
/// answers whether it is now held (taking) or was held (letting go). Runs whose keys collide
/// share a lock: one of them waits for the next try.
async fn hold(s: &mut Session, what: Hold, run_id: &str, take: bool) -> Result<bool, String> {
    let f = match take {
        true => "pg_try_advisory_lock",
        false => "pg_advisory_unlock",
    };
    let sql = format!("SELECT {f}({}, hashtext({}))", what as i32, literal(run_id));
    let got = s
        .query(&sql, QUERY_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    Ok(got.as_deref() == Some("t"))
}

#[cfg(test)]
mod tests {
    use super::Notice;

    #[test]
    fn notices_read_back_as_sent_with_their_sender() {
        for n in [
            Notice::Queued {
                labels: "gpu,linux".into(),
                preferred: Some("w1".into()),
            },
            Notice::Queued {
                labels: String::new(),
                preferred: None,
            },
            Notice::WakeAll,
            Notice::Worker("abc".into()),
            Notice::Run("r1".into()),
            Notice::Output {
                run_id: "r1".into(),
                step_id: "s1".into(),
                byte: 12345,
            },
            Notice::DutiesFree,
        ] {
            let text = n.encode("node1");
            assert_eq!(Notice::decode(&text), Some((n, "node1")), "{text}");
        }
        assert_eq!(
            Notice::decode("r\tnode1"),
            None,
            "a reset is never received"
        );
        assert_eq!(Notice::decode("garbage"), None);
    }
}
