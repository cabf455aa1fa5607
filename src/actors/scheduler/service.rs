//! What the SchedulerActor does: accepts runs, starts them within the concurrency caps, and
//! advances a run when its step finishes (settle the step, decide, queue the next step or
//! finish the run) — each decision in one transaction that locks the run. A completion that
//! arrives through the LeaseActor is decided in its own transaction (`decide.rs`) and carried
//! out here. Finishing (merge, final artifacts, cleanup) lives in `finish.rs`; control verbs
//! in `control.rs`.

use super::events::EventHub;
use super::lease::QueueChanged;
use super::submit;
use crate::api::CreateRunRequest;
use crate::artifacts::ArtifactStore;
use crate::db::models::RunRow;
use crate::db::{self, Conn, Db, DbError};
use crate::domain::events as ev;
use crate::domain::pipeline;
use crate::domain::time::now_ms;
use crate::settings::SchedulerSettings;
use crate::workspace::mirror::Mirrors;
use actix::Recipient;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

pub use crate::domain::pipeline::INFRA_PREFIX;

/// Why a scheduler operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum SchedError {
    #[error("run not found")]
    NotFound,
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    InvalidTransition(String),
    #[error("{0}")]
    NoCapacity(String),
    #[error(transparent)]
    Db(DbError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<DbError> for SchedError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::NotFound => SchedError::NotFound,
            other => SchedError::Db(other),
        }
    }
}

/// The scheduler's logic and what it needs.
pub struct SchedulerService {
    pub db: Db,
    pub hub: EventHub,
    pub store: ArtifactStore,
    pub mirrors: Arc<Mirrors>,
    pub settings: SchedulerSettings,
    pub queue: Recipient<QueueChanged>,
    /// Wakes the one starter task (see `start.rs`): the only way anything starts runs.
    pub(super) start_wanted: tokio::sync::Notify,
    /// Runs being finished by this process right now.
    pub(super) finishing: Mutex<HashSet<String>>,
}

/// What an advance decided, to act on after the commit.
pub enum Advanced {
    Nothing,
    Queued {
        labels: String,
        preferred: Option<String>,
    },
    Finish,
    Rewrite {
        name: String,
        prompt: String,
    },
}

impl SchedulerService {
    pub fn new(
        db: Db,
        hub: EventHub,
        store: ArtifactStore,
        mirrors: Arc<Mirrors>,
        settings: SchedulerSettings,
        queue: Recipient<QueueChanged>,
    ) -> Self {
        SchedulerService {
            db,
            hub,
            store,
            mirrors,
            settings,
            queue,
            start_wanted: tokio::sync::Notify::new(),
            finishing: Mutex::new(HashSet::new()),
        }
    }

    /// Validates and stores a new run (PENDING), emitting RUN_CREATED.
    pub async fn create_run(&self, req: CreateRunRequest) -> Result<RunRow, SchedError> {
        let mirrors = self.mirrors.clone();
        let kind = self.store.kind();
        let row =
            tokio::task::spawn_blocking(move || submit::prepare(&req, &mirrors, kind, now_ms()))
                .await
                .map_err(|e| SchedError::Internal(e.to_string()))?
                .map_err(|e| SchedError::Invalid(e.0))?;
        let r = row.clone();
        self.db
            .tx(move |c| {
                db::runs::insert_with_state(c, &r)?;
                let payload = ev::run_created(
                    &r.id,
                    &r.name,
                    &r.name_source,
                    &r.spec_path,
                    r.plan_path.as_deref(),
                );
                db::events::append(
                    c,
                    Some(&r.id),
                    None,
                    ev::RUN_CREATED,
                    &payload,
                    r.created_at,
                )?;
                Ok::<_, SchedError>(())
            })
            .await?;
        tracing::info!(run_id = %row.id, name = %row.name, "run created");
        self.hub.notify(&row.id);
        Ok(row)
    }

    /// Advances a run whose step finished (or that has no step yet). Idempotent.
    pub async fn advance(self: &Arc<Self>, run_id: &str) -> Result<(), SchedError> {
        let (id, mirrors) = (run_id.to_string(), self.mirrors.clone());
        let outcome = self.db.tx(move |c| advance_in_tx(c, &id, &mirrors)).await?;
        self.carry_out(run_id, outcome).await;
        Ok(())
    }

    /// Acts on what an advance decided, once its transaction committed.
    pub(super) async fn carry_out(self: &Arc<Self>, run_id: &str, outcome: Vec<Advanced>) {
        self.hub.notify(run_id);
        for a in outcome {
            match a {
                Advanced::Nothing => {}
                Advanced::Queued { labels, preferred } => self.queue.do_send(QueueChanged {
                    required_labels: labels,
                    preferred_worker: preferred,
                    broadcast: false,
                }),
                Advanced::Finish => {
                    let me = self.clone();
                    let id = run_id.to_string();
                    actix::spawn(async move { me.finish(&id).await });
                }
                Advanced::Rewrite { name, prompt } => {
                    self.store_artifact(run_id, None, &name, prompt.into_bytes())
                        .await;
                }
            }
        }
    }
}

/// Settles the run's last finished step and acts on the decision, in the caller's transaction.
fn advance_in_tx(
    c: &mut Conn,
    run_id: &str,
    mirrors: &Mirrors,
) -> Result<Vec<Advanced>, SchedError> {
    let (run, state) = db::runs::lock_with_state(c, run_id)?;
    if run.status != "RUNNING" && run.status != "PAUSED" {
        return Ok(vec![Advanced::Nothing]);
    }
    if state.finishing.is_some() {
        return Ok(vec![Advanced::Finish]);
    }
    if db::steps::any_active(c, run_id, None)? {
        return Ok(vec![Advanced::Nothing]);
    }
    let last = db::steps::last(c, run_id)?;
    super::decide::decide_in_tx(c, &run, state, last, Vec::new(), mirrors, now_ms())
}

/// A terminal decision being carried out, stored in `run_state.finishing`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FinishPlan {
    pub completed: bool,
    pub reason: Option<String>,
}

impl From<pipeline::Outcome> for FinishPlan {
    fn from(o: pipeline::Outcome) -> Self {
        match o {
            pipeline::Outcome::Completed => FinishPlan {
                completed: true,
                reason: None,
            },
            pipeline::Outcome::Failed { reason } => FinishPlan {
                completed: false,
                reason: Some(reason),
            },
        }
    }
}
