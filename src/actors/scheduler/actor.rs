//! The SchedulerActor owns run progress: it creates runs, starts them within the concurrency
//! caps, decides what follows each finished step, applies pause/resume/cancel/retry, and runs a
//! reconciliation tick. Its messages are declared here; the work is done by
//! [`SchedulerService`]. `app` starts it; `http` sends it the runs API's requests and the
//! LeaseActor's follow-ups reach it as [`StepFinished`] (wired by `app`).

use super::control::Control;
use super::error::SchedError;
use super::service::SchedulerService;
use crate::actors::run_progress::outcome::Advanced;
use crate::actors::ticks::background_tick;
use crate::api::CreateRunRequest;
use crate::db::models::RunRow;
use actix::prelude::*;
use std::sync::Arc;
use tracing::Instrument;

/// The owner of run progress.
pub struct SchedulerActor {
    svc: Arc<SchedulerService>,
}

impl SchedulerActor {
    pub fn new(svc: Arc<SchedulerService>) -> Self {
        SchedulerActor { svc }
    }
}

impl Actor for SchedulerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let every = self.svc.tick_interval();
        ctx.spawn(actix::fut::wrap_future::<_, Self>(
            self.svc.clone().run_starter(),
        ));
        self.svc.request_start();
        let svc = self.svc.clone();
        background_tick(ctx, every, move || {
            let svc = svc.clone();
            async move {
                if let Err(e) = svc.tick().await {
                    tracing::error!(error = %e, "scheduler tick failed");
                }
            }
        });
    }
}

/// Validate and store a new run.
#[derive(Message)]
#[rtype(result = "Result<RunRow, SchedError>")]
pub struct CreateRun(pub CreateRunRequest);

impl Handler<CreateRun> for SchedulerActor {
    type Result = ResponseFuture<Result<RunRow, SchedError>>;
    fn handle(&mut self, m: CreateRun, _: &mut Self::Context) -> Self::Result {
        let svc = self.svc.clone();
        let span = tracing::info_span!("CreateRun", run = tracing::field::Empty);
        Box::pin(
            async move {
                let row = svc.create_run(m.0).await?;
                tracing::Span::current().record("run", row.id.as_str());
                // Start it now if there is room, rather than at the next tick.
                svc.request_start();
                Ok(row)
            }
            .instrument(span),
        )
    }
}

/// Pause, resume, cancel or retry a run.
#[derive(Message)]
#[rtype(result = "Result<(), SchedError>")]
pub struct ControlRun {
    pub run_id: String,
    pub verb: Control,
}

impl Handler<ControlRun> for SchedulerActor {
    type Result = ResponseFuture<Result<(), SchedError>>;
    fn handle(&mut self, m: ControlRun, _: &mut Self::Context) -> Self::Result {
        let svc = self.svc.clone();
        let span = tracing::info_span!("ControlRun", run = %m.run_id, verb = ?m.verb);
        Box::pin(async move { svc.control(&m.run_id, m.verb).await }.instrument(span))
    }
}

/// A step of the run finished (or was given up): carry out what its transaction decided
/// to follow it, or, when nothing was decided there, decide now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StepFinished {
    pub run_id: String,
    pub decided: Option<Vec<Advanced>>,
}

impl Handler<StepFinished> for SchedulerActor {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, m: StepFinished, _: &mut Self::Context) -> Self::Result {
        let svc = self.svc.clone();
        let span = tracing::info_span!("StepFinished", run = %m.run_id);
        Box::pin(
            async move {
                if let Some(actions) = m.decided {
                    svc.carry_out(&m.run_id, actions).await;
                } else if let Err(e) = svc.advance(&m.run_id).await {
                    // The tick retries: the step stays unsettled until an advance succeeds.
                    tracing::error!(run_id = %m.run_id, error = %e, "cannot advance run");
                }
            }
            .instrument(span),
        )
    }
}
