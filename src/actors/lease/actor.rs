//! The LeaseActor owns leases: it grants them on claim (long polls answered as soon as a
//! matching step is queued), renews them on heartbeats, sweeps expired ones on a timer, takes
//! back the leases of lost workers, and rejects every write that carries a stale epoch. Its
//! messages are declared here; the work is done by [`LeaseService`]. `app` starts it; the
//! HTTP worker API, the local control plane, the registry (renewals, lost workers) and the
//! scheduler (queued steps) send it messages.

use super::error::LeaseError;
use super::service::LeaseService;
use crate::actors::ticks::background_tick;
use crate::api::{ArtifactRef, Assignment, CompleteRequest, HeldLease, LeaseVerdict, OutputAck};
use actix::prelude::*;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// The lease owner.
pub struct LeaseActor {
    svc: Arc<LeaseService>,
}

impl LeaseActor {
    pub fn new(svc: Arc<LeaseService>) -> Self {
        LeaseActor { svc }
    }
}

impl Actor for LeaseActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let every = self.svc.sweep_interval();
        // The first sweep's pause is measured from here, not from the service's construction.
        self.svc.sweeps_begin();
        let svc = self.svc.clone();
        background_tick(ctx, every, move || {
            let svc = svc.clone();
            async move {
                // One controller sweeps (see `actors::peers`); the others keep their pause
                // clock fresh, so that taking over is not mistaken for a pause.
                if !svc.holds_duties() {
                    svc.sweeps_begin();
                    return;
                }
                if let Err(e) = svc.sweep().await {
                    tracing::error!(error = %e, "lease sweep failed");
                }
            }
        });
        // Every controller looks at the agent accounts: a slot freed elsewhere wakes its
        // claims.
        let svc = self.svc.clone();
        background_tick(ctx, Duration::from_secs(1), move || {
            let svc = svc.clone();
            async move { svc.look_at_accounts().await }
        });
    }
}

/// Runs `f` on the service and answers with its result, in a span named for the message
/// carrying the worker (and the step and lease epoch) it is about: every line logged while it
/// is handled names them.
macro_rules! forward {
    ($msg:ty, $out:ty, |$m:ident| [$($field:tt)*], |$svc:ident| $body:expr) => {
        impl Handler<$msg> for LeaseActor {
            type Result = ResponseFuture<$out>;
            fn handle(&mut self, $m: $msg, _: &mut Self::Context) -> Self::Result {
                let span = tracing::info_span!(stringify!($msg), $($field)*);
                let $svc = self.svc.clone();
                Box::pin(async move { $body }.instrument(span))
            }
        }
    };
}

/// Claim a step for a worker, waiting up to `wait` (long poll).
#[derive(Message)]
#[rtype(result = "Result<Option<Assignment>, LeaseError>")]
pub struct ClaimStep {
    pub worker_id: String,
    pub labels: Vec<String>,
    pub wait: Duration,
}
forward!(ClaimStep,
    Result<Option<Assignment>, LeaseError>,
    |m| [worker = %m.worker_id], |svc| svc.claim(&m.worker_id, &m.labels, m.wait).await
);

/// Renew the leases a worker reports in its heartbeat.
#[derive(Message)]
#[rtype(result = "Result<Vec<LeaseVerdict>, LeaseError>")]
pub struct RenewLeases {
    pub worker_id: String,
    pub leases: Vec<HeldLease>,
}
forward!(RenewLeases,
    Result<Vec<LeaseVerdict>, LeaseError>,
    |m| [worker = %m.worker_id], |svc| svc.renew(&m.worker_id, m.leases).await
);

/// Append live output of a leased step.
#[derive(Message)]
#[rtype(result = "Result<OutputAck, LeaseError>")]
pub struct AppendOutput {
    pub worker_id: String,
    pub step_id: String,
    pub epoch: i64,
    pub offset: u64,
    pub content: String,
}
forward!(AppendOutput, Result<OutputAck, LeaseError>, |m| [worker = %m.worker_id, step = %m.step_id, epoch = m.epoch], |svc| svc
    .writes()
    .append_output(&m.worker_id, &m.step_id, m.epoch, m.offset, m.content)
    .await);

/// Record an event about a leased step.
#[derive(Message)]
#[rtype(result = "Result<(), LeaseError>")]
pub struct RecordStepEvent {
    pub worker_id: String,
    pub step_id: String,
    pub epoch: i64,
    pub event_type: String,
    pub payload: serde_json::Value,
}
forward!(RecordStepEvent, Result<(), LeaseError>, |m| [worker = %m.worker_id, step = %m.step_id, epoch = m.epoch], |svc| svc
    .writes()
    .record_event(&m.worker_id, &m.step_id, m.epoch, m.event_type, m.payload)
    .await);

/// Store an artifact of a leased step.
#[derive(Message)]
#[rtype(result = "Result<ArtifactRef, LeaseError>")]
pub struct StoreArtifact {
    pub worker_id: String,
    pub step_id: String,
    pub epoch: i64,
    pub name: String,
    pub bytes: bytes::Bytes,
}
forward!(StoreArtifact, Result<ArtifactRef, LeaseError>, |m| [worker = %m.worker_id, step = %m.step_id, epoch = m.epoch], |svc| svc
    .writes()
    .store_artifact(&m.worker_id, &m.step_id, m.epoch, &m.name, m.bytes)
    .await);

/// Read an artifact of the leased step's run (checkpoint bundles).
#[derive(Message)]
#[rtype(result = "Result<bytes::Bytes, LeaseError>")]
pub struct ReadArtifact {
    pub worker_id: String,
    pub step_id: String,
    pub epoch: i64,
    pub name: String,
}
forward!(ReadArtifact, Result<bytes::Bytes, LeaseError>, |m| [worker = %m.worker_id, step = %m.step_id, epoch = m.epoch], |svc| svc
    .writes()
    .read_artifact(&m.worker_id, &m.step_id, m.epoch, &m.name)
    .await);

/// Complete a leased step; when the request has `claim_next`, also claim the worker's next
/// step (one its `labels` allow) at once, without waiting.
#[derive(Message)]
#[rtype(result = "Result<Option<Assignment>, LeaseError>")]
pub struct CompleteStep {
    pub worker_id: String,
    pub step_id: String,
    pub request: CompleteRequest,
    pub labels: Vec<String>,
}
forward!(CompleteStep,
    Result<Option<Assignment>, LeaseError>,
    |m| [worker = %m.worker_id, step = %m.step_id, epoch = m.request.epoch], |svc| svc
        .complete(&m.worker_id, &m.step_id, m.request, &m.labels)
        .await
);

/// Hand a lease back without using a retry (worker drain).
#[derive(Message)]
#[rtype(result = "Result<(), LeaseError>")]
pub struct ReleaseLease {
    pub worker_id: String,
    pub step_id: String,
    pub epoch: i64,
    pub reason: String,
    /// Not claimable again for this long (ms): the agent API pushed back.
    pub pause_ms: Option<u64>,
}
forward!(ReleaseLease, Result<(), LeaseError>, |m| [worker = %m.worker_id, step = %m.step_id, epoch = m.epoch], |svc| svc
    .release(&m.worker_id, &m.step_id, m.epoch, &m.reason, m.pause_ms)
    .await);

/// Take away every lease of a worker that went offline or was revoked.
#[derive(Message)]
#[rtype(result = "Result<usize, LeaseError>")]
pub struct ReleaseWorkerLeases {
    pub worker_id: String,
    pub reason: String,
}
forward!(ReleaseWorkerLeases, Result<usize, LeaseError>, |m| [worker = %m.worker_id], |svc| svc
    .release_worker(&m.worker_id, &m.reason)
    .await);

/// A step was queued or became claimable (notification from the scheduler).
#[derive(Message)]
#[rtype(result = "()")]
pub struct QueueChanged {
    pub required_labels: String,
    pub preferred_worker: Option<String>,
    /// Many steps may have become claimable (a resumed run): wake every waiter.
    pub broadcast: bool,
}

impl Handler<QueueChanged> for LeaseActor {
    type Result = ();
    #[tracing::instrument(name = "QueueChanged", skip_all)]
    fn handle(&mut self, m: QueueChanged, _: &mut Self::Context) {
        if m.broadcast {
            self.svc.wake_all();
        } else {
            self.svc
                .queue_changed(&m.required_labels, m.preferred_worker.as_deref());
        }
    }
}
