//! The only module that knows the roles. A role is turned into [`Subsystems`] here; `build`
//! opens storage, starts the actors and the HTTP server that role needs (a worker joins its
//! controller in the background, serving `/health` meanwhile), and `run_until_stopped` waits
//! for a signal and shuts down the way the role should (a worker drains; a single host hands
//! its running steps back).

mod runners;

use crate::actors::events::EventHub;
use crate::actors::lease::{LeaseActor, LeaseService, LeaseServiceParts};
use crate::actors::peers::{Notice, Peers};
use crate::actors::registry::{RegistryService, WorkerRegistryActor};
use crate::actors::run_progress::outcome::FollowUp;
use crate::actors::scheduler::{SchedulerActor, SchedulerService, StepFinished};
use crate::artifacts::run_logs::RunLogs;
use crate::artifacts::ArtifactStore;
use crate::db::{self, Db, DbError};
use crate::domain::WorkerStatus;
use crate::http::{self, state::AppState};
use crate::metrics::Metrics;
use crate::output_store::{OutputStore, Posted};
use crate::settings::{Role, Settings, StorageType};
use crate::worker::WorkerHandle;
use crate::workspace::mirror::Mirrors;
use actix::{Actor, AsyncContext, Context};
use actix_web::{dev::Server, web, App, HttpServer};
use runners::{join_controller, remote_runner_config, start_local_runners, stop_worker};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Which parts of loopd a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subsystems {
    /// Owns the database (runs migrations): scheduler, lease and registry actors.
    pub control: bool,
    /// Serves the runs API.
    pub runs_api: bool,
    /// Serves the worker API.
    pub worker_api: bool,
    /// Runs steps through the in-process control plane.
    pub local_runners: bool,
    /// Runs steps claimed from a remote controller.
    pub remote_runners: bool,
    /// Marks silent workers offline (and takes their leases back before their TTL). Off on a
    /// single host, whose only worker lives and dies with the process: a restart takes its
    /// leases back, and a host suspended for less than a lease TTL keeps its steps.
    pub offline_detection: bool,
}

impl Subsystems {
    /// The one place a role becomes switches.
    pub fn for_role(role: Role) -> Self {
        match role {
            Role::Single => Subsystems {
                control: true,
                runs_api: true,
                worker_api: false,
                local_runners: true,
                remote_runners: false,
                offline_detection: false,
            },
            Role::Controller => Subsystems {
                control: true,
                runs_api: true,
                worker_api: true,
                local_runners: false,
                remote_runners: false,
                offline_detection: true,
            },
            Role::Worker => Subsystems {
                control: false,
                runs_api: false,
                worker_api: false,
                local_runners: false,
                remote_runners: true,
                offline_detection: false,
            },
        }
    }
}

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("storage: {0}")]
    Storage(#[from] DbError),
    #[error("artifact store: {0}")]
    Artifacts(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Startup(String),
}

/// A started loopd process.
pub struct Application {
    port: u16,
    server: Server,
    worker: Option<WorkerHandle>,
    /// Role worker: registering with the controller (retried until it answers), then running.
    joining: Option<tokio::task::JoinHandle<WorkerHandle>>,
    subsystems: Subsystems,
    settings: Settings,
    /// What a stopping controller hands over.
    handover: Option<Handover>,
}

/// What `build_control` starts.
struct Control {
    state: AppState,
    handover: Handover,
}

/// What a stopping controller hands over before its server stops: its long polls (answered
/// at once, so that their workers claim through another controller), its duties (taken by
/// another controller at once) and the heartbeats it has not written yet.
#[derive(Clone)]
struct Handover {
    lease: Arc<LeaseService>,
    registry: Arc<RegistryService>,
    peers: Arc<Peers>,
}

impl Handover {
    async fn hand_over(&self) {
        self.lease.stop_claims();
        self.peers.release().await;
        if let Err(e) = self.registry.flush_beats().await {
            tracing::warn!(error = %e, "cannot write the last heartbeats");
        }
    }
}

impl Application {
    /// Starts everything the role needs. Must be called inside an actix system.
    pub async fn build(settings: Settings) -> Result<Application, AppError> {
        let subsystems = Subsystems::for_role(settings.role);
        warn_if_open(&settings);
        std::fs::create_dir_all(&settings.data_dir).map_err(|e| {
            AppError::Startup(format!(
                "cannot create data_dir {}: {e}",
                settings.data_dir.display()
            ))
        })?;
        let control = if subsystems.control {
            Some(build_control(&settings, subsystems).await?)
        } else {
            None
        };
        let ready = control.as_ref().map(|c| c.state.ready.clone());
        let handover = control.as_ref().map(|c| c.handover.clone());
        let (mut worker, mut joining) = (None, None);
        // A worker's `/ready`: 503 until it has registered with its controller.
        let joined = http::health::Joined::default();
        if subsystems.local_runners {
            let c = control
                .as_ref()
                .ok_or_else(|| AppError::Startup("local runners need the control plane".into()))?;
            worker = Some(start_local_runners(&settings, &c.state).await?);
        } else if subsystems.remote_runners {
            // In the background: a worker whose controller is away still serves /health and
            // still stops on a signal.
            let cfg = remote_runner_config(&settings)?;
            let set = joined.0.clone();
            joining = Some(actix::spawn(join_controller(settings.clone(), cfg, set)));
        }
        let state = control.map(|c| c.state);
        let (server, port) = serve(&settings, subsystems, state, joined)?;
        if let Some(r) = ready {
            r.store(true, Ordering::Release);
        }
        tracing::info!(role = settings.role.as_str(), port, "loopd started");
        Ok(Application {
            port,
            server,
            worker,
            joining,
            subsystems,
            settings,
            handover,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs until SIGINT/SIGTERM, then shuts down as the role should.
    pub async fn run_until_stopped(self) -> Result<(), AppError> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term =
            signal(SignalKind::terminate()).map_err(|e| AppError::Startup(e.to_string()))?;
        let mut int =
            signal(SignalKind::interrupt()).map_err(|e| AppError::Startup(e.to_string()))?;
        let Application {
            server,
            mut worker,
            joining,
            subsystems,
            settings,
            handover,
            ..
        } = self;
        let handle = server.handle();
        let served = actix::spawn(server);
        let mut stopped = false;
        if let Some(mut joining) = joining {
            tokio::select! {
                joined = &mut joining => match joined {
                    Ok(w) => worker = Some(w),
                    Err(e) => return Err(AppError::Startup(format!("worker start failed: {e}"))),
                },
                _ = term.recv() => stopped = true,
                _ = int.recv() => stopped = true,
            }
            if stopped {
                joining.abort();
                tracing::info!("signal received before joining the controller: stopping");
            }
        }
        if !stopped {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
            if let Some(worker) = &worker {
                let drain = subsystems
                    .remote_runners
                    .then(|| Duration::from_millis(settings.worker.drain_timeout_ms));
                stop_worker(worker, drain, &mut term, &mut int).await;
            }
        }
        if let (true, Some(h)) = (subsystems.worker_api, &handover) {
            h.hand_over().await;
            tracing::info!("handed over: long polls answered, duties released");
        }
        handle.stop(true).await;
        let _ = served.await;
        tracing::info!("loopd stopped");
        Ok(())
    }
}

/// Says loudly, at every start, what an operator opened on purpose.
fn warn_if_open(settings: &Settings) {
    if settings.serves_unauthenticated_beyond_loopback() {
        tracing::warn!(
            bind = %settings.bind,
            "UNAUTHENTICATED RUNS API: auth.allow_unauthenticated = true and no client token is \
             set, so anyone who reaches this address can submit, control and read runs"
        );
    }
    if settings.auth.allow_request_commands == Some(true) && settings.binds_beyond_loopback() {
        tracing::warn!(
            bind = %settings.bind,
            "auth.allow_request_commands = true: any token that may submit runs may also name \
             the commands workers run (agent_cmd, verify_cmds, …)"
        );
    }
}

async fn open_db(settings: &Settings) -> Result<Db, AppError> {
    let s = settings.clone();
    let db = tokio::task::spawn_blocking(move || match s.storage.kind {
        StorageType::Sqlite => Db::open_sqlite(&s.sqlite_path(), s.storage.pool_size),
        StorageType::Postgres => {
            let url = s
                .storage
                .url
                .as_ref()
                .map(|u| u.expose().to_string())
                .unwrap_or_default();
            Db::open_postgres(&url, s.storage.pool_size, true)
        }
    })
    .await
    .map_err(|e| AppError::Startup(e.to_string()))??;
    Ok(db)
}

/// Storage, stores and the three control actors.
async fn build_control(settings: &Settings, subsystems: Subsystems) -> Result<Control, AppError> {
    let db = open_db(settings).await?;
    // The daily budgets the run decisions and the scheduler's tick enforce.
    settings.budgets.install();
    crate::actors::lease::prepare_accounts(&db, &settings.api_limits)
        .await
        .map_err(|e| AppError::Startup(e.to_string()))?;
    let store = ArtifactStore::from_settings(&settings.artifacts, &settings.data_dir)
        .map_err(|e| AppError::Artifacts(e.to_string()))?;
    // Controllers keep live output in Postgres, where all of them read it.
    let output = match (settings.role, settings.storage.kind) {
        (Role::Controller, StorageType::Postgres) => OutputStore::in_database(),
        _ => OutputStore::new(settings.data_dir.join("output")),
    };
    let remotes = crate::workspace::Remotes::from_settings(&settings.git);
    let mirrors = Arc::new(Mirrors::new(settings.data_dir.join("mirrors"), remotes));
    let hub = EventHub::new();
    let metrics = Arc::new(Metrics::default());
    if settings.role == Role::Single {
        recover_single(&db, settings).await?;
    }
    // Controllers on Postgres share the database with their peers; anything else is alone.
    let (peers, peers_task) = match (settings.role, settings.storage.kind, &settings.storage.url) {
        (Role::Controller, StorageType::Postgres, Some(url)) => {
            let (p, t) = Peers::on_postgres(url.expose());
            (p, Some(t))
        }
        _ => (Peers::alone(), None),
    };
    // A single host also writes a run's files where the existing daemon kept them.
    let run_logs = match settings.role {
        Role::Single => RunLogs::at(&settings.data_dir),
        _ => RunLogs::disabled(),
    };
    let sched_ctx = Context::<SchedulerActor>::new();
    let sched_addr = sched_ctx.address();
    let lease_svc = Arc::new(LeaseService::new(LeaseServiceParts {
        db: db.clone(),
        hub: hub.clone(),
        metrics: metrics.clone(),
        output: output.clone(),
        store: store.clone(),
        lease: settings.lease.clone(),
        sched: settings.scheduler.clone(),
        follow_up: Arc::new(move |f: FollowUp| {
            sched_addr.do_send(StepFinished {
                run_id: f.run_id,
                decided: f.decided,
            })
        }),
        mirrors: mirrors.clone(),
        peers: peers.clone(),
        api_limits: settings.api_limits.clone(),
        run_logs: run_logs.clone(),
    }));
    let lease = LeaseActor::new(lease_svc.clone()).start();
    let sched_svc = Arc::new(
        SchedulerService::new(
            db.clone(),
            hub.clone(),
            store.clone(),
            mirrors.clone(),
            settings.scheduler.clone(),
            lease.clone().recipient(),
            peers.clone(),
        )
        .with_run_logs(run_logs),
    );
    let scheduler = sched_ctx.run(SchedulerActor::new(sched_svc));
    let registry_svc = Arc::new(RegistryService::new(
        db.clone(),
        metrics.clone(),
        settings.lease.clone(),
        settings.worker.clone(),
        &settings.limits,
        lease.clone(),
        peers.clone(),
    ));
    registry_svc
        .load()
        .await
        .map_err(|e| AppError::Startup(e.to_string()))?;
    wire_peers(&peers, &lease_svc, &registry_svc, &hub, &output);
    if peers_task.is_some() {
        wire_streams(&peers, &hub, &output, &db);
    }
    match peers_task {
        Some(task) => task
            .spawn()
            .map_err(|e| AppError::Startup(format!("cannot start the peers' session: {e}")))?,
        // A lone controller holds the duties from its start.
        None if settings.role == Role::Controller => registry_svc
            .take_over()
            .await
            .map_err(|e| AppError::Startup(e.to_string()))?,
        None => {}
    }
    let handover = Handover {
        lease: lease_svc,
        registry: registry_svc.clone(),
        peers,
    };
    let registry = WorkerRegistryActor::new(registry_svc, subsystems.offline_detection).start();
    let state = AppState {
        db,
        hub,
        store,
        output,
        mirrors,
        metrics,
        scheduler,
        lease,
        registry,
        clients: settings.client_tokens().into(),
        join_token: settings.auth.worker_join_token.clone(),
        request_commands_allowed: settings.request_commands_allowed(),
        limits: settings.limits.clone(),
        uploads: http::uploads::UploadSlots::new(settings.limits.artifact_uploads_per_worker),
        streams: http::stream_slots::StreamSlots::new(
            settings.limits.output_streams_per_run,
            settings.limits.output_streams_per_client,
        ),
        ready: Arc::new(AtomicBool::new(false)),
    };
    Ok(Control { state, handover })
}

/// What the other controllers' notices do here, and what taking over the duties does first.
fn wire_peers(
    peers: &Arc<Peers>,
    lease: &Arc<LeaseService>,
    registry: &Arc<RegistryService>,
    hub: &EventHub,
    output: &OutputStore,
) {
    let (l, r, h, o) = (lease.clone(), registry.clone(), hub.clone(), output.clone());
    peers.on_notice(Arc::new(move |n| match n {
        Notice::Queued { labels, preferred } => l.queue_changed_here(&labels, preferred.as_deref()),
        Notice::WakeAll => l.wake_all_here(),
        Notice::Worker(id) => r.forget(&id),
        Notice::Run(id) => h.notify_here(&id),
        Notice::Output {
            run_id,
            step_id,
            byte,
        } => o.posted_elsewhere(Posted {
            run_id,
            step_id,
            byte,
        }),
        Notice::Reset => {
            l.wake_all_here();
            r.forget_all();
            h.notify_every_run_here();
        }
        Notice::DutiesFree => {}
    }));
    let r = registry.clone();
    peers.on_take_over(Arc::new(move || {
        let r = r.clone();
        Box::pin(async move { r.take_over().await.map_err(|e| e.to_string()) })
    }));
}

/// Live streams across controllers: a run's wake-ups are sent to the other controllers, and
/// output stored here is announced to them (their relays read it for their readers).
fn wire_streams(peers: &Arc<Peers>, hub: &EventHub, output: &OutputStore, db: &Db) {
    let p = peers.clone();
    hub.forward_to(Arc::new(move |run_id| {
        p.publish(Notice::Run(run_id.to_string()))
    }));
    if output.shared() {
        output.start_relay(db.clone());
        let p = peers.clone();
        output.on_append(Arc::new(move |posted: Posted| {
            p.publish(Notice::Output {
                run_id: posted.run_id,
                step_id: posted.step_id,
                byte: posted.byte,
            })
        }));
    }
}

/// Single role at start: the previous process and its runner are gone, so its workers are
/// offline and the steps they held go back to the queue.
async fn recover_single(db: &Db, settings: &Settings) -> Result<(), AppError> {
    let max = settings.scheduler.max_infra_attempts as i32;
    let requeued = db
        .tx(move |c| {
            let list = crate::actors::lease::release_all_at_restart(c, max)?;
            for w in db::workers::with_status(c, WorkerStatus::ONLINE)? {
                db::workers::set_status(c, &w.id, WorkerStatus::Offline)?;
            }
            Ok::<_, DbError>(list)
        })
        .await?;
    if !requeued.is_empty() {
        tracing::warn!(
            steps = requeued.len(),
            "requeued the steps of the previous run of this daemon"
        );
    }
    Ok(())
}

/// Binds the HTTP server with the routes the role serves.
fn serve(
    settings: &Settings,
    subsystems: Subsystems,
    state: Option<AppState>,
    joined: http::health::Joined,
) -> Result<(Server, u16), AppError> {
    let st = state.clone();
    // HTTP threads: a controller's handlers only parse, hand work to the actors and answer
    // (database work runs on the blocking pool, the lease work on the LeaseActor), so each
    // extra thread mostly adds switches between threads. On 2 cores one thread made 14 % more
    // completion cycles than four (alternate runs, the throughput bench); half the cores, at
    // least one, keeps room for larger machines.
    let workers = if subsystems.control {
        std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
    } else {
        1
    };
    let server = HttpServer::new(move || {
        let mut app = App::new()
            .wrap(actix_web::middleware::from_fn(
                crate::telemetry::request_id_in_5xx,
            ))
            .wrap(tracing_actix_web::TracingLogger::<
                crate::telemetry::RequestSpan,
            >::new())
            .configure(http::health_routes)
            .default_service(web::to(http::not_found));
        if subsystems.remote_runners {
            app = app.configure(|cfg| http::worker_health_routes(cfg, &joined));
        }
        if let Some(s) = &st {
            app = app
                .app_data(web::Data::new(s.clone()))
                .configure(|cfg| http::extractor_config(cfg, s));
            // The worker API first: see `http::worker_api`.
            if subsystems.worker_api {
                app = app.configure(http::worker_api);
            }
            if subsystems.runs_api {
                app = app.configure(http::runs_api);
            }
        }
        app
    })
    .workers(workers)
    .disable_signals()
    .shutdown_timeout(5)
    .bind(&settings.bind)
    .map_err(|source| AppError::Bind {
        addr: settings.bind.clone(),
        source,
    })?;
    let port = server.addrs().first().map(|a| a.port()).unwrap_or(0);
    Ok((server.run(), port))
}
