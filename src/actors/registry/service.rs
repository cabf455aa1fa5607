//! What the WorkerRegistryActor does, all of it here: registration and per-worker tokens
//! (stored hashed; a token is `<worker_id>.<secret>` so a request names its worker),
//! authentication of worker requests (one process per token), heartbeats (kept in memory and
//! written in one statement every check interval, a status change at once with its event),
//! marking silent workers offline (their leases are then taken back at once, not at their
//! TTL), listing and revocation; registration within `limits.max_live_workers` and
//! `limits.registrations_per_minute`. Its state: a cache of the workers table (`known.rs`; the
//! table is the truth, shared with the other controllers on the database) and the buffered
//! beats (`beats.rs`). Whether a worker is silent is decided from the table, where every
//! controller writes its beats. Only the actor (`actor.rs`) calls it; `app` builds and loads
//! it.

use super::beats::BeatBuffer;
use super::error::RegistryError;
use super::known::{hash, KnownWorkers, WorkerIdentity};
use crate::actors::lease::{LeaseActor, ReleaseWorkerLeases, RenewLeases};
use crate::actors::peers::{Notice, Peers};
use crate::actors::ticks::PauseClock;
use crate::api::{HeartbeatRequest, HeartbeatResponse, RegisterRequest, RegisterResponse};
use crate::db::models::{decode_labels, encode_labels, new_id, LeaseRow, WorkerRow};
use crate::db::{self, Db, DbError};
use crate::domain::events as ev;
use crate::domain::WorkerStatus;
use crate::metrics::Metrics;
use crate::settings::{LeaseSettings, LimitSettings, WorkerSettings};
use actix::Addr;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// The registry's logic.
pub struct RegistryService {
    db: Db,
    metrics: Arc<Metrics>,
    lease: LeaseSettings,
    worker: WorkerSettings,
    leases: Addr<LeaseActor>,
    known: KnownWorkers,
    /// Heartbeats not yet written.
    beats: BeatBuffer,
    /// Since the offline check last ran.
    checked: PauseClock,
    /// The other controllers: told of workers marked offline or revoked here, and who runs the
    /// offline check.
    peers: Arc<Peers>,
    /// Registrations with the join token (None: no limit).
    registrations: Option<(u32, DefaultDirectRateLimiter)>,
    /// Workers online at once (None: no limit).
    max_live: Option<usize>,
    /// Held from counting the online workers to recording a new one, so that registrations at
    /// the same moment cannot pass the limit together.
    registering: tokio::sync::Mutex<()>,
}

impl RegistryService {
    pub fn new(
        db: Db,
        metrics: Arc<Metrics>,
        lease: LeaseSettings,
        worker: WorkerSettings,
        limits: &LimitSettings,
        leases: Addr<LeaseActor>,
        peers: Arc<Peers>,
    ) -> Self {
        let per_minute = limits.registrations_per_minute;
        RegistryService {
            db,
            metrics,
            lease,
            worker,
            leases,
            known: KnownWorkers::default(),
            beats: BeatBuffer::default(),
            checked: PauseClock::new(),
            peers,
            registrations: NonZeroU32::new(per_minute)
                .map(|n| (per_minute, RateLimiter::direct(Quota::per_minute(n)))),
            max_live: (limits.max_live_workers > 0).then_some(limits.max_live_workers),
            registering: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether this controller runs the offline check now (see `actors::peers`).
    pub fn holds_duties(&self) -> bool {
        self.peers.holds_duties()
    }

    /// Another controller changed this worker: read it again on its next request.
    pub fn forget(&self, worker_id: &str) {
        self.known.forget(worker_id);
    }

    /// Notices may have been missed: read every worker again on its next request.
    pub fn forget_all(&self) {
        self.known.forget_all();
    }

    /// How long a worker may stay silent before it is marked offline.
    pub fn offline_after(&self) -> Duration {
        Duration::from_millis(self.lease.worker_offline_after_ms)
    }

    /// Loads the workers into the cache at start.
    pub async fn load(&self) -> Result<(), RegistryError> {
        let rows = self.db.run(db::workers::all).await?;
        self.known.load(rows);
        Ok(())
    }

    /// Taking over the duties (at the start of a lone controller, or from a controller that
    /// died or stopped): every online worker gets a fresh heartbeat and its leases a fresh
    /// lease period. The duties may have gone undone for a while (a controller that was down,
    /// a holder that died), and the workers must not pay for that: neither the whole pool
    /// declared offline nor the steps its workers kept running expired the moment they
    /// resume. The checks' pause clock starts again.
    pub async fn take_over(&self) -> Result<(), RegistryError> {
        let ttl = self.lease.ttl_ms as i64;
        self.db
            .tx(move |c| {
                let now = c.now_ms()?;
                let online: Vec<String> = db::workers::with_status(c, WorkerStatus::ONLINE)?
                    .into_iter()
                    .map(|w| w.id)
                    .collect();
                db::workers::all_online_heard_at(c, now)?;
                db::leases::extend_of_workers(c, &online, ttl)?;
                Ok::<_, DbError>(())
            })
            .await?;
        self.checked.reset();
        Ok(())
    }

    /// Registers a worker process: a fresh id and token (shown only in this answer). Past the
    /// limits on live workers and on registrations a minute it is refused, nothing stored.
    pub async fn register(&self, req: RegisterRequest) -> Result<RegisterResponse, RegistryError> {
        self.register_as(req, true).await
    }

    async fn register_as(
        &self,
        req: RegisterRequest,
        limited: bool,
    ) -> Result<RegisterResponse, RegistryError> {
        let printable = |s: &str| !s.chars().any(char::is_control);
        if !printable(&req.hostname)
            || !printable(&req.capabilities.version)
            || req.capabilities.version.len() > 255
        {
            return Err(RegistryError::Invalid(
                "hostname and version must be printable text".into(),
            ));
        }
        if req
            .capabilities
            .labels
            .iter()
            .any(|l| l.is_empty() || l.len() > 64 || !printable(l) || l.contains(','))
        {
            return Err(RegistryError::Invalid(
                "labels must be 1-64 printable characters without commas".into(),
            ));
        }
        if req.hostname.trim().is_empty() || req.hostname.len() > 255 {
            return Err(RegistryError::Invalid(
                "hostname must be 1-255 characters".into(),
            ));
        }
        if req.capabilities.slots == 0 || req.capabilities.slots > 1024 {
            return Err(RegistryError::Invalid(
                "capabilities.slots must be between 1 and 1024".into(),
            ));
        }
        // Checked after the request's own validity: a malformed registration is a 400 and uses
        // up nothing.
        let _registering = self.registering.lock().await;
        if limited {
            self.admit()?;
        }
        let max_live = self.max_live.filter(|_| limited);
        let id = new_id();
        let secret = format!(
            "{:032x}{:032x}",
            rand::random::<u128>(),
            rand::random::<u128>()
        );
        let token = format!("{id}.{secret}");
        let labels = encode_labels(&req.capabilities.labels);
        let row_labels = labels.clone();
        let (wid, h, inst) = (id.clone(), hash(&token), req.instance_id.clone());
        let hostname = req.hostname.clone();
        let caps = req.capabilities.clone();
        self.db
            .tx(move |c| {
                // Counted in the transaction that stores the worker, with registrations
                // serialised (see `count_online_for_registration`): nothing is stored past it.
                if let Some(max) = max_live {
                    if db::workers::count_online_for_registration(c)? >= max {
                        tracing::warn!(
                            max,
                            "registration refused: the live worker limit is reached"
                        );
                        return Err(RegistryError::TooManyWorkers(max));
                    }
                }
                let now = c.now_ms()?;
                db::workers::insert(
                    c,
                    &WorkerRow {
                        id: wid.clone(),
                        hostname: hostname.clone(),
                        token_hash: h,
                        instance_id: inst,
                        labels: row_labels,
                        slots: caps.slots as i32,
                        version: caps.version.clone(),
                        status: WorkerStatus::Idle.as_str().into(),
                        registered_at: now,
                        last_heartbeat_at: now,
                        metrics_json: None,
                    },
                )?;
                db::events::append(
                    c,
                    None,
                    None,
                    ev::WORKER_REGISTERED,
                    &ev::worker_registered(&wid, &hostname),
                    now,
                )?;
                Ok::<_, RegistryError>(())
            })
            .await?;
        self.known
            .registered(&id, hash(&token), req.instance_id, decode_labels(&labels));
        tracing::info!(worker_id = %id, hostname = %req.hostname, "worker registered");
        Ok(RegisterResponse {
            worker_id: id,
            token,
            heartbeat_interval_ms: self.worker.heartbeat_interval_ms,
            lease_ttl_ms: self.lease.ttl_ms,
            worker_offline_after_ms: Some(self.lease.worker_offline_after_ms),
        })
    }

    /// Registers this process's own runner (role single): no token needed in-process.
    pub async fn register_local(
        &self,
        labels: &[String],
        slots: u32,
    ) -> Result<String, RegistryError> {
        let r = self
            .register_as(
                RegisterRequest {
                    hostname: nix::unistd::gethostname()
                        .map(|h| h.to_string_lossy().to_string())
                        .unwrap_or_else(|_| "localhost".into()),
                    capabilities: crate::api::Capabilities {
                        labels: labels.to_vec(),
                        slots,
                        version: env!("CARGO_PKG_VERSION").into(),
                    },
                    instance_id: None,
                },
                false,
            )
            .await?;
        Ok(r.worker_id)
    }

    /// Checks a worker token (and the path's worker id, when the route has one). A worker
    /// this process has not cached (it registered through another controller, or another
    /// controller changed it) is read from the table first.
    pub async fn authenticate(
        &self,
        token: &str,
        path_worker: Option<&str>,
        instance: Option<&str>,
    ) -> Result<WorkerIdentity, RegistryError> {
        let id = token
            .split_once('.')
            .map(|(id, _)| id.to_string())
            .ok_or(RegistryError::Unauthorized)?;
        if !self.known.contains(&id) {
            let wid = id.clone();
            let row = self.db.run(move |c| db::workers::get(c, &wid)).await?;
            match row {
                Some(row) => self.known.load(vec![row]),
                None => return Err(RegistryError::Unauthorized),
            }
        }
        let (identity, pinned) = self.known.authenticate(token, path_worker, instance)?;
        if let Some(first) = pinned {
            self.persist_instance(&identity.worker_id, &first);
        }
        Ok(identity)
    }

    /// Stores the instance a worker was pinned to (so a restarted controller keeps the pin).
    fn persist_instance(&self, worker_id: &str, instance: &str) {
        let (db, wid, inst) = (self.db.clone(), worker_id.to_string(), instance.to_string());
        tokio::spawn(async move {
            let r = db
                .run(move |c| db::workers::pin_instance(c, &wid, &inst))
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "cannot store a worker's instance id");
            }
        });
    }

    /// Workers that are idle, busy or draining (as the table says: some may be connected to
    /// other controllers).
    pub async fn online_count(&self) -> Result<usize, RegistryError> {
        let n = self.db.run(db::workers::count_online).await?;
        Ok(n)
    }

    /// A registration within this controller's `limits.registrations_per_minute` for the join
    /// token (the live-worker limit is checked where the worker is stored).
    fn admit(&self) -> Result<(), RegistryError> {
        if let Some((per_minute, limiter)) = &self.registrations {
            if limiter.check().is_err() {
                tracing::warn!(
                    per_minute,
                    "registration refused: too many with the join token"
                );
                return Err(RegistryError::TooManyRegistrations(*per_minute));
            }
        }
        Ok(())
    }

    /// Records a heartbeat and renews the leases it lists (and takes back those it should list
    /// and does not: see `lease/unreported.rs`). An unchanged status is only noted in memory (written
    /// with the next batch); a change is written at once, with its event.
    pub async fn heartbeat(
        &self,
        worker_id: &str,
        req: HeartbeatRequest,
    ) -> Result<HeartbeatResponse, RegistryError> {
        if !req.status.is_online() {
            return Err(RegistryError::Invalid(
                "status must be idle, busy or draining".into(),
            ));
        }
        self.metrics.heartbeats.inc();
        let metrics = serde_json::Value::Object(req.metrics);
        let status = req.status;
        let changed = self.known.beat(worker_id, status, || {
            self.beats.note(worker_id, status, metrics.to_string())
        })?;
        if changed {
            self.beats.forget(worker_id);
            let wid = worker_id.to_string();
            let alive = self
                .db
                .run(move |c| {
                    let now = c.now_ms()?;
                    let m = metrics.to_string();
                    let alive = db::workers::touch(c, &wid, status.as_str(), Some(&m), now)?;
                    if alive {
                        let p = ev::worker_heartbeat(&wid, status.as_str(), &metrics);
                        db::events::append(c, None, None, ev::WORKER_HEARTBEAT, &p, now)?;
                    }
                    Ok::<_, DbError>(alive)
                })
                .await?;
            if !alive {
                return Err(RegistryError::Offline);
            }
            self.known.set_online_status(worker_id, status);
        }
        // Even an empty list goes to the LeaseActor: it checks it against what it granted
        // (in memory; the database only when a grant went unreported).
        let verdicts = self
            .leases
            .send(RenewLeases {
                worker_id: worker_id.to_string(),
                leases: req.leases,
            })
            .await
            .map_err(|e| RegistryError::Lease(e.to_string()))?
            .map_err(|e| RegistryError::Lease(e.to_string()))?;
        Ok(HeartbeatResponse { leases: verdicts })
    }

    /// Whether this check comes within `gap` of the previous one (or of the start of the
    /// checks). When it does not, this process was paused (or could not reach its database)
    /// and the beats sent meanwhile waited in its sockets, so the silence is its own, not its
    /// workers': every online worker then gets a fresh period instead.
    async fn unpaused(&self, gap: Duration) -> Result<bool, RegistryError> {
        let paused = self.checked.since();
        self.checked.reset();
        if paused <= gap {
            return Ok(true);
        }
        self.db
            .run(|c| {
                let now = c.now_ms()?;
                db::workers::all_online_heard_at(c, now)
            })
            .await?;
        tracing::warn!(
            paused_ms = paused.as_millis() as u64,
            "no offline check for half the offline limit: every online worker gets a fresh period"
        );
        Ok(false)
    }

    /// The offline checks begin: the first is measured from now.
    pub fn checks_begin(&self) {
        self.checked.reset();
    }

    /// How often every controller writes its buffered beats, and the offline check runs.
    pub fn check_interval(&self) -> Duration {
        (self.offline_after() / 4).clamp(Duration::from_millis(100), Duration::from_secs(2))
    }

    /// Writes the buffered beats (the time they are written at is the database's clock).
    pub async fn flush_beats(&self) -> Result<(), RegistryError> {
        let beats = self.beats.take();
        if beats.is_empty() {
            return Ok(());
        }
        self.db
            .run(move |c| {
                let now = c.now_ms()?;
                db::workers::touch_many(c, &beats, now)
            })
            .await?;
        Ok(())
    }

    /// Marks workers silent for longer than `worker_offline_after_ms` offline and takes their
    /// leases back. Silence is judged from the table, where every controller writes the beats
    /// it received (each within one [`check_interval`](Self::check_interval) of their
    /// arrival, so a worker gets that much more); the judgement and the marking are one
    /// statement, so a beat written meanwhile keeps its worker.
    pub async fn mark_silent_offline(&self) -> Result<usize, RegistryError> {
        let after = self.lease.worker_offline_after_ms;
        let limit = Duration::from_millis(after);
        if !self.unpaused(limit / 2).await? {
            return Ok(0);
        }
        self.flush_beats().await?;
        let slack = self.check_interval().as_millis() as i64;
        let silent = self
            .db
            .tx(move |c| {
                let now = c.now_ms()?;
                let ids = db::workers::mark_silent_offline(c, now - after as i64 - slack)?;
                for id in &ids {
                    let p = ev::worker_offline(id, &format!("no heartbeat for {after} ms"));
                    db::events::append(c, None, None, ev::WORKER_OFFLINE, &p, now)?;
                }
                Ok::<_, DbError>(ids)
            })
            .await?;
        if silent.is_empty() {
            return Ok(0);
        }
        self.known.offline(&silent);
        for id in &silent {
            self.peers.publish(Notice::Worker(id.clone()));
            self.beats.forget(id);
            tracing::warn!(worker_id = %id, "worker offline");
            self.take_leases(id, "worker offline").await;
        }
        Ok(silent.len())
    }

    /// Every worker with the leases it holds.
    pub async fn list(&self) -> Result<Vec<(WorkerRow, Vec<LeaseRow>)>, RegistryError> {
        // Shown heartbeat times are current.
        self.flush_beats().await?;
        let out = self
            .db
            .run(|c| {
                let workers = db::workers::all(c)?;
                let leases = db::leases::all(c)?;
                Ok::<_, DbError>(
                    workers
                        .into_iter()
                        .map(|w| {
                            let held = leases
                                .iter()
                                .filter(|l| l.worker_id == w.id)
                                .cloned()
                                .collect();
                            (w, held)
                        })
                        .collect(),
                )
            })
            .await?;
        Ok(out)
    }

    /// Revokes a worker's token and takes its leases back.
    pub async fn revoke(&self, worker_id: &str) -> Result<(), RegistryError> {
        let wid = worker_id.to_string();
        let found = self
            .db
            .run(move |c| db::workers::set_status(c, &wid, WorkerStatus::Revoked))
            .await?;
        if !found {
            return Err(RegistryError::NotFound);
        }
        self.known.revoke(worker_id);
        self.peers.publish(Notice::Worker(worker_id.to_string()));
        self.take_leases(worker_id, "worker revoked").await;
        tracing::info!(worker_id, "worker revoked");
        Ok(())
    }

    async fn take_leases(&self, worker_id: &str, reason: &str) {
        let r = self
            .leases
            .send(ReleaseWorkerLeases {
                worker_id: worker_id.into(),
                reason: reason.into(),
            })
            .await;
        if !matches!(r, Ok(Ok(_))) {
            tracing::error!(
                worker_id,
                "cannot release the leases of a lost worker (they will expire)"
            );
        }
    }
}
