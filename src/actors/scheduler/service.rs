//! What the SchedulerActor does, all of it here: accepts runs, starts them within the
//! concurrency caps (one starter task), advances a run when its step finishes (settle the
//! step, decide, queue the next step or finish the run) — each decision in one transaction
//! that locks the run — applies the control verbs, and runs the reconciliation tick. A
//! completion that arrives through the LeaseActor is decided in its own transaction
//! (`run_progress::decide`) and carried out here. The transactions' bodies are in `start.rs`
//! and `control.rs`, finishing a run in `finish.rs`. Only the actor (`actor.rs`) calls it.

use super::control::{transition, Control};
use super::error::SchedError;
use super::finish::Finisher;
use super::start::{explain_waits, pick_next, stuck_runs};
use super::submit;
use crate::actors::events::EventHub;
use crate::actors::lease::QueueChanged;
use crate::actors::peers::{Hold, Peers};
use crate::actors::run_progress::decide::decide_in_tx;
use crate::actors::run_progress::outcome::{Advanced, FinishPlan};
use crate::api::CreateRunRequest;
use crate::artifacts::run_logs::RunLogs;
use crate::artifacts::ArtifactStore;
use crate::db::models::RunRow;
use crate::db::{self, Conn, Db};
use crate::domain::events as ev;
use crate::domain::time::now_ms;
use crate::domain::{RunStatus, WorkspaceSource};
use crate::settings::SchedulerSettings;
use crate::workspace::mirror::Mirrors;
use crate::workspace::worktree as wt;
use actix::Recipient;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How often the tick looks for worktrees past their `worktree_keep_days`.
const EXPIRY_EVERY: Duration = Duration::from_secs(5);

/// The scheduler's logic and what it needs.
pub struct SchedulerService {
    db: Db,
    hub: EventHub,
    store: ArtifactStore,
    mirrors: Arc<Mirrors>,
    settings: SchedulerSettings,
    queue: Recipient<QueueChanged>,
    /// Wakes the one starter task: the only way anything starts runs.
    start_wanted: tokio::sync::Notify,
    /// Finishing runs (and the controller's own artifacts).
    finisher: Finisher,
    /// When the tick last looked for expired worktrees.
    expired_at: std::sync::Mutex<Option<std::time::Instant>>,
    /// Runs whose worktree this process is making: nothing advances them meanwhile.
    preparing: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Who runs the reconciliation (see `actors::peers`).
    peers: Arc<Peers>,
}

impl SchedulerService {
    pub fn new(
        db: Db,
        hub: EventHub,
        store: ArtifactStore,
        mirrors: Arc<Mirrors>,
        settings: SchedulerSettings,
        queue: Recipient<QueueChanged>,
        peers: Arc<Peers>,
    ) -> Self {
        SchedulerService {
            finisher: Finisher::new(
                db.clone(),
                hub.clone(),
                store.clone(),
                mirrors.clone(),
                peers.clone(),
            ),
            db,
            hub,
            store,
            mirrors,
            settings,
            queue,
            start_wanted: tokio::sync::Notify::new(),
            preparing: Default::default(),
            expired_at: Default::default(),
            peers,
        }
    }

    /// Copies the runs' files where the existing daemon kept them, too (a single host).
    pub fn with_run_logs(mut self, logs: RunLogs) -> Self {
        self.finisher = self.finisher.with_run_logs(logs);
        self
    }

    /// How often the reconciliation tick runs.
    pub fn tick_interval(&self) -> Duration {
        Duration::from_millis(self.settings.tick_interval_ms.max(50))
    }

    /// Validates and stores a new run (PENDING), emitting RUN_CREATED.
    pub async fn create_run(&self, req: CreateRunRequest) -> Result<RunRow, SchedError> {
        let mirrors = self.mirrors.clone();
        let kind = self.store.kind();
        let prepared =
            tokio::task::spawn_blocking(move || submit::prepare(&req, &mirrors, kind, now_ms()))
                .await
                .map_err(|e| SchedError::Internal(e.to_string()))?
                .map_err(|e| SchedError::Invalid(e.0))?;
        let row = self
            .db
            .tx(move |c| {
                let mut r = prepared.row;
                super::branch::claim_run_branch(c, &mut r, &prepared.on_remote)?;
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
                Ok::<_, SchedError>(r)
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
                    self.finisher
                        .store_artifact(run_id, None, &name, prompt.into_bytes())
                        .await;
                }
            }
        }
    }

    /// Carries out the stored terminal decision of a run (see `finish.rs`); its place is then
    /// free, so the starter task starts what waited for it. Safe to call again.
    pub async fn finish(self: &Arc<Self>, run_id: &str) {
        if self.finisher.finish(run_id).await {
            self.request_start();
        }
    }

    /// Asks the starter task to start as many PENDING runs as the caps allow. Returns at once:
    /// runs are started by that one task only, so starting is serial (the caps hold) and
    /// cannot re-enter itself — a run that fails at setup is finished from inside a start
    /// pass, and finishing only asks for another pass.
    pub fn request_start(&self) {
        self.start_wanted.notify_one();
    }

    /// The starter task, spawned once by the SchedulerActor: a pass per request (requests made
    /// during a pass give one more pass after it), until the actor stops.
    pub async fn run_starter(self: Arc<Self>) {
        loop {
            self.start_wanted.notified().await;
            if let Err(e) = self.start_pass().await {
                tracing::warn!(error = %e, "cannot start pending runs");
            }
        }
    }

    /// Starts as many PENDING runs as the caps allow. Private, called only by
    /// [`run_starter`](Self::run_starter).
    async fn start_pass(self: &Arc<Self>) -> Result<(), SchedError> {
        loop {
            let caps = self.caps();
            let picked = self.db.tx(move |c| pick_next(c, caps)).await?;
            let Some(run) = picked else { return Ok(()) };
            tracing::info!(run_id = %run.id, "run started");
            self.prepare_and_advance(&run).await?;
        }
    }

    /// Makes the worktree of a started run, then advances it (its first step is queued with
    /// the worktree's paths). Does nothing while another call — of this process or of another
    /// controller — prepares the same run; once it holds the run, it reads the run again, so
    /// a worktree another call made meanwhile is not made twice. A run whose worktree cannot
    /// be made fails.
    async fn prepare_and_advance(self: &Arc<Self>, run: &RunRow) -> Result<(), SchedError> {
        let mark = |on: bool| {
            let mut set = self.preparing.lock().unwrap_or_else(|e| e.into_inner());
            match on {
                true => set.insert(run.id.clone()),
                false => set.remove(&run.id),
            }
        };
        if !mark(true) {
            return Ok(());
        }
        if !self.peers.hold(Hold::Prepare, &run.id).await {
            mark(false);
            return Ok(());
        }
        let id = run.id.clone();
        let read = self.db.run(move |c| db::runs::require(c, &id)).await;
        let prepared = match &read {
            Ok(now) if needs_worktree(now) || worktree_gone(now) => {
                self.prepare_workspace(now).await
            }
            _ => Ok(()),
        };
        self.peers.let_go(Hold::Prepare, &run.id);
        mark(false);
        read?;
        match prepared {
            Ok(()) => self.advance(&run.id).await,
            Err(reason) => self.fail_now(&run.id, &format!("run_error:{reason}")).await,
        }
    }

    /// Whether the run's worktree is being made by this process right now.
    fn is_preparing(&self, run_id: &str) -> bool {
        let set = self.preparing.lock().unwrap_or_else(|e| e.into_inner());
        set.contains(run_id)
    }

    /// `max_concurrent_runs` and `max_runs_per_workspace`.
    fn caps(&self) -> (usize, usize) {
        (
            self.settings.max_concurrent_runs as usize,
            self.settings.max_runs_per_workspace as usize,
        )
    }

    /// Creates the worktree of a shared_fs run (reused after a restart or retry).
    async fn prepare_workspace(&self, run: &RunRow) -> Result<(), String> {
        if run.workspace_source != WorkspaceSource::SharedFs.as_str() {
            return Ok(());
        }
        let r = run.clone();
        let plan = tokio::task::spawn_blocking(move || {
            let root = Path::new(&r.workspace_root);
            let w = match r.worktree() {
                Some(w) => w,
                None => {
                    let c = r.config();
                    wt::plan_worktree(
                        root,
                        &r.name,
                        c.base_branch.as_deref(),
                        &c.run_branch_prefix,
                        c.merge_target_branch.as_deref(),
                        c.merge_strategy,
                        &c.worktree_path_template,
                    )
                    .map_err(|e| format!("cannot plan worktree: {e}"))?
                }
            };
            wt::create_worktree(root, &w).map_err(|e| format!("cannot create worktree: {e}"))?;
            // The run's steps write runner notes (and a single host its copies) into the log
            // directory of the workspace: keep them out of `git status`.
            if let Err(e) = crate::workspace::exclude_log_dir(root, &r.config().log_dir) {
                tracing::warn!(run_id = %r.id, error = %e, "cannot exclude the run's log directory");
            }
            Ok::<_, String>(w)
        })
        .await
        .map_err(|e| e.to_string())??;
        let (id, json) = (
            run.id.clone(),
            serde_json::to_string(&plan).map_err(|e| e.to_string())?,
        );
        self.db
            .tx(move |c| {
                let mut row = db::runs::require(c, &id)?;
                row.worktree_json = Some(json);
                row.worktree_cleanup_status = None;
                row.worktree_cleaned_at = None;
                row.updated_at = now_ms();
                db::runs::save(c, &row)?;
                let p = ev::worktree(&id, &plan.worktree_path, Some(&plan.run_branch));
                db::events::append(c, Some(&id), None, ev::WORKTREE_CREATED, &p, row.updated_at)?;
                Ok::<_, SchedError>(())
            })
            .await
            .map_err(|e| e.to_string())?;
        self.hub.notify(&run.id);
        Ok(())
    }

    /// Fails a run at once (before any step could run), then finishes it.
    async fn fail_now(self: &Arc<Self>, run_id: &str, reason: &str) -> Result<(), SchedError> {
        let (id, why) = (run_id.to_string(), reason.to_string());
        self.db
            .tx(move |c| {
                let mut state = db::runs::state(c, &id)?;
                let plan = FinishPlan {
                    completed: false,
                    reason: Some(why),
                };
                state.finishing = serde_json::to_string(&plan).ok();
                db::runs::save_state(c, &state)?;
                Ok::<_, SchedError>(())
            })
            .await?;
        self.finish(run_id).await;
        Ok(())
    }

    /// The periodic reconciliation: start runs (every controller: starts are serialised by the
    /// database), and, on the controller that holds the duties, re-advance interrupted runs
    /// and explain waits.
    pub async fn tick(self: &Arc<Self>) -> Result<(), SchedError> {
        self.request_start();
        if !self.peers.holds_duties() {
            return Ok(());
        }
        let stuck = self.db.run(stuck_runs).await?;
        for id in stuck {
            if self.is_preparing(&id) {
                continue;
            }
            // Started, but its worktree was never made (the process stopped in between).
            let run_id = id.clone();
            let row = self.db.run(move |c| db::runs::require(c, &run_id)).await?;
            if needs_worktree(&row) {
                if let Err(e) = self.prepare_and_advance(&row).await {
                    tracing::warn!(run_id = %id, error = %e, "cannot start run");
                }
                continue;
            }
            if let Err(e) = self.advance(&id).await {
                tracing::warn!(run_id = %id, error = %e, "cannot advance run");
            }
        }
        if self.db.tx(explain_waits).await? {
            // Steps a daily budget held are claimable again.
            self.queue.do_send(QueueChanged {
                required_labels: String::new(),
                preferred_worker: None,
                broadcast: true,
            });
        }
        if self.expiry_due() {
            super::expire::expire_worktrees(&self.db, now_ms()).await?;
        }
        Ok(())
    }

    /// Whether the tick should look for expired worktrees now (every few seconds).
    fn expiry_due(&self) -> bool {
        let mut last = self.expired_at.lock().unwrap_or_else(|e| e.into_inner());
        let due = last.is_none_or(|t| t.elapsed() >= EXPIRY_EVERY);
        if due {
            *last = Some(std::time::Instant::now());
        }
        due
    }

    /// Applies a control verb to a run (see `control.rs`).
    pub async fn control(self: &Arc<Self>, run_id: &str, verb: Control) -> Result<(), SchedError> {
        let id = run_id.to_string();
        let caps = self.caps();
        self.db.tx(move |c| transition(c, &id, verb, caps)).await?;
        self.hub.notify(run_id);
        tracing::info!(run_id, verb = ?verb, "run control");
        match verb {
            Control::Pause => {}
            Control::Resume => {
                self.advance(run_id).await?;
                self.queue.do_send(QueueChanged {
                    required_labels: String::new(),
                    preferred_worker: None,
                    broadcast: true,
                });
            }
            Control::Cancel => {
                let me = self.clone();
                let id = run_id.to_string();
                actix::spawn(async move {
                    me.finisher.finalize_canceled(&id).await;
                    me.request_start();
                });
            }
            Control::Retry => {
                self.request_start();
            }
        }
        Ok(())
    }
}

/// Settles the run's last finished step and acts on the decision, in the caller's transaction.
fn advance_in_tx(
    c: &mut Conn,
    run_id: &str,
    mirrors: &Mirrors,
) -> Result<Vec<Advanced>, SchedError> {
    let (run, state) = db::runs::lock_with_state(c, run_id)?;
    if !run.status_in(&[RunStatus::Running, RunStatus::Paused]) {
        return Ok(vec![Advanced::Nothing]);
    }
    if state.finishing.is_some() {
        return Ok(vec![Advanced::Finish]);
    }
    if needs_worktree(&run) {
        // Its starter advances it once the worktree exists: a step queued now would point
        // the agent at the primary checkout.
        return Ok(vec![Advanced::Nothing]);
    }
    if db::steps::any_active(c, run_id, None)? {
        return Ok(vec![Advanced::Nothing]);
    }
    let last = db::steps::last(c, run_id)?;
    Ok(decide_in_tx(
        c,
        &run,
        state,
        last,
        Vec::new(),
        mirrors,
        now_ms(),
    )?)
}

/// A shared_fs run that has no worktree yet.
fn needs_worktree(run: &RunRow) -> bool {
    run.workspace_source == WorkspaceSource::SharedFs.as_str() && run.worktree_json.is_none()
}

/// A shared_fs run planned a worktree that is no longer there (a retried run whose worktree
/// was cleaned when it ended): starting it makes the worktree again from the same plan.
fn worktree_gone(run: &RunRow) -> bool {
    run.workspace_source == WorkspaceSource::SharedFs.as_str()
        && run
            .worktree()
            .is_some_and(|w| !Path::new(&w.worktree_path).exists())
}
