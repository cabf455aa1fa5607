//! The WorkerRegistryActor owns workers: registration and tokens, authentication, heartbeats,
//! labels and slots, draining, revocation, and marking silent workers offline on a timer. Its
//! messages are declared here; the work is done by [`RegistryService`]. `app` starts it; the
//! HTTP worker API (and its authentication), the health routes and the local control plane
//! send it messages.

use super::error::RegistryError;
use super::known::WorkerIdentity;
use super::service::RegistryService;
use crate::actors::ticks::background_tick;
use crate::api::{HeartbeatRequest, HeartbeatResponse, RegisterRequest, RegisterResponse};
use crate::db::models::{LeaseRow, WorkerRow};
use actix::prelude::*;
use std::sync::Arc;
use tracing::Instrument;

/// The worker owner.
pub struct WorkerRegistryActor {
    svc: Arc<RegistryService>,
    detect_offline: bool,
}

impl WorkerRegistryActor {
    /// With `detect_offline`, silent workers are marked offline on a timer (not on a single
    /// host, whose only worker is this process).
    pub fn new(svc: Arc<RegistryService>, detect_offline: bool) -> Self {
        WorkerRegistryActor {
            svc,
            detect_offline,
        }
    }
}

impl Actor for WorkerRegistryActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if !self.detect_offline {
            return;
        }
        // Check often enough that a silent worker is caught within a quarter of the limit.
        let after = self.svc.offline_after();
        let every = self.svc.check_interval();
        // The first check waits one whole offline period: the workers of a controller that was
        // down must get that long, counted from now rather than from `load`, to reach it again
        // (a slow start must not cost them their leases).
        let svc = self.svc.clone();
        ctx.run_later(after, move |_, ctx| {
            svc.checks_begin();
            background_tick(ctx, every, move || {
                let svc = svc.clone();
                async move {
                    // Every controller writes the beats it received; one judges silence (see
                    // `actors::peers`), the others keep their pause clock fresh.
                    if !svc.holds_duties() {
                        svc.checks_begin();
                        if let Err(e) = svc.flush_beats().await {
                            tracing::error!(error = %e, "cannot write heartbeats");
                        }
                        return;
                    }
                    if let Err(e) = svc.mark_silent_offline().await {
                        tracing::error!(error = %e, "offline check failed");
                    }
                }
            });
        });
    }
}

/// Runs `f` on the service and answers with its result, in a span named for the message
/// carrying the worker it is about (when there is one).
macro_rules! forward {
    ($msg:ty, $out:ty, |$m:ident| [$($field:tt)*], |$svc:ident| $body:expr) => {
        impl Handler<$msg> for WorkerRegistryActor {
            type Result = ResponseFuture<$out>;
            fn handle(&mut self, $m: $msg, _: &mut Self::Context) -> Self::Result {
                let span = tracing::info_span!(stringify!($msg), $($field)*);
                let $svc = self.svc.clone();
                Box::pin(async move { $body }.instrument(span))
            }
        }
    };
}

/// Register a worker process (join token already checked by the caller).
#[derive(Message)]
#[rtype(result = "Result<RegisterResponse, RegistryError>")]
pub struct RegisterWorker(pub RegisterRequest);
forward!(RegisterWorker, Result<RegisterResponse, RegistryError>, |m| [], |svc| svc.register(m.0).await);

/// Register this process's own runner (role single).
#[derive(Message)]
#[rtype(result = "Result<String, RegistryError>")]
pub struct RegisterLocalWorker {
    pub labels: Vec<String>,
    pub slots: u32,
}
forward!(RegisterLocalWorker, Result<String, RegistryError>, |m| [], |svc| svc
    .register_local(&m.labels, m.slots)
    .await);

/// Check a worker token (and the worker id of the route, if any).
#[derive(Message)]
#[rtype(result = "Result<WorkerIdentity, RegistryError>")]
pub struct AuthenticateWorker {
    pub token: String,
    pub path_worker: Option<String>,
    pub instance: Option<String>,
}

forward!(
    AuthenticateWorker,
    Result<WorkerIdentity, RegistryError>,
    |m| [worker = m.path_worker.as_deref()],
    |svc| svc
        .authenticate(&m.token, m.path_worker.as_deref(), m.instance.as_deref())
        .await
);

/// A worker's heartbeat: liveness, status, and lease renewals.
#[derive(Message)]
#[rtype(result = "Result<HeartbeatResponse, RegistryError>")]
pub struct Heartbeat {
    pub worker_id: String,
    pub request: HeartbeatRequest,
}
forward!(Heartbeat, Result<HeartbeatResponse, RegistryError>, |m| [worker = %m.worker_id], |svc| svc
    .heartbeat(&m.worker_id, m.request)
    .await);

/// Every worker and its leases.
#[derive(Message)]
#[rtype(result = "Result<Vec<(WorkerRow, Vec<LeaseRow>)>, RegistryError>")]
pub struct ListWorkers;
forward!(
    ListWorkers,
    Result<Vec<(WorkerRow, Vec<LeaseRow>)>, RegistryError>,
    |_m| [],
    |svc| svc.list().await
);

/// Revoke a worker's token and requeue its leases.
#[derive(Message)]
#[rtype(result = "Result<(), RegistryError>")]
pub struct RevokeWorker(pub String);
forward!(RevokeWorker, Result<(), RegistryError>, |m| [worker = %m.0], |svc| svc.revoke(&m.0).await);

/// How many workers are online.
#[derive(Message)]
#[rtype(result = "Result<usize, RegistryError>")]
pub struct CountOnline;
forward!(CountOnline, Result<usize, RegistryError>, |_m| [], |svc| svc
    .online_count()
    .await);
