//! What a lease holder writes for its step — output, events, artifacts, the completion — each
//! checked against the step's current lease epoch first. Part of the LeaseActor's service.

use super::completion::{completed, note_in_state, sched_err};
use super::decide::{decide_in_tx, decides_now};
use super::lease_service::{
    authorize, authorize_held, completion_digest, Attempt, FollowUp, LeaseError, LeaseService,
};
use crate::api::{ArtifactRef, Assignment, CompleteRequest, OutputAck};
use crate::artifacts::validate_name;
use crate::db::fast::Claimed;
use crate::db::models::{new_id, ArtifactRow};
use crate::db::{self, DbError};
use crate::domain::events as ev;
use crate::output_store::OutputError;

/// Event types a worker may not send: the controller alone emits them.
fn reserved(event_type: &str) -> bool {
    ["RUN_", "LEASE_", "WORKER_", "STEP_", "ARTIFACT_"]
        .iter()
        .any(|p| event_type.starts_with(p))
}

fn valid_event_type(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 64
        && t.starts_with(|c: char| c.is_ascii_uppercase())
        && t.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

impl LeaseService {
    /// Appends live output of a step at `offset`; returns how many bytes are now held.
    pub async fn append_output(
        &self,
        worker_id: &str,
        step_id: &str,
        epoch: i64,
        offset: u64,
        content: String,
    ) -> Result<OutputAck, LeaseError> {
        let (wid, sid, out) = (
            worker_id.to_string(),
            step_id.to_string(),
            self.output.clone(),
        );
        // In one transaction: the lease stays locked while the bytes are appended.
        let (run_id, next) = self
            .db
            .tx(move |c| -> Result<_, LeaseError> {
                let (step, _) = authorize(c, &sid, &wid, epoch)?;
                let next = out
                    .append(&step.run_id, &sid, offset, content.as_bytes())
                    .map_err(|e| match e {
                        OutputError::Gap { expected, .. } => LeaseError::OffsetGap(expected),
                        OutputError::Io(e) => LeaseError::Internal(e.to_string()),
                    })?;
                Ok((step.run_id, next))
            })
            .await?;
        self.hub.notify(&run_id);
        Ok(OutputAck { next_offset: next })
    }

    /// Records an event a worker sends about its step.
    pub async fn record_event(
        &self,
        worker_id: &str,
        step_id: &str,
        epoch: i64,
        event_type: String,
        payload: serde_json::Value,
    ) -> Result<(), LeaseError> {
        if !valid_event_type(&event_type) || reserved(&event_type) {
            return Err(LeaseError::Invalid(format!(
                "event_type '{event_type}' must be UPPER_SNAKE_CASE and not one the controller emits"
            )));
        }
        let (wid, sid) = (worker_id.to_string(), step_id.to_string());
        let run_id = self
            .db
            .tx(move |c| -> Result<_, LeaseError> {
                let (step, _) = authorize(c, &sid, &wid, epoch)?;
                let now = c.now_ms()?;
                db::events::append(
                    c,
                    Some(&step.run_id),
                    Some(&sid),
                    &event_type,
                    &payload,
                    now,
                )?;
                Ok(step.run_id)
            })
            .await?;
        self.hub.notify(&run_id);
        Ok(())
    }

    /// Stores an artifact uploaded through the controller.
    pub async fn store_artifact(
        &self,
        worker_id: &str,
        step_id: &str,
        epoch: i64,
        name: &str,
        bytes: bytes::Bytes,
    ) -> Result<ArtifactRef, LeaseError> {
        validate_name(name).map_err(|e| LeaseError::Invalid(e.to_string()))?;
        let (wid, sid) = (worker_id.to_string(), step_id.to_string());
        let step = self
            .db
            .run(move |c| authorize(c, &sid, &wid, epoch))
            .await?
            .0;
        // Under the lease's own key: an upload that outlives its lease (it passed the check
        // above, then retried for long) cannot overwrite what the step's next holder stored.
        let key = crate::artifacts::attempt_key(&step.run_id, step_id, epoch, name)
            .map_err(|e| LeaseError::Invalid(e.to_string()))?;
        let stored = self
            .store
            .put_key(&key, bytes)
            .await
            .map_err(|e| LeaseError::Store(e.to_string()))?;
        let r = ArtifactRef {
            name: name.to_string(),
            size: stored.size,
            sha256: stored.sha256.clone(),
        };
        let (wid, sid, run_id) = (
            worker_id.to_string(),
            step_id.to_string(),
            step.run_id.clone(),
        );
        let (kind, art) = (self.store.kind().as_str().to_string(), r.clone());
        self.db
            .tx(move |c| -> Result<_, LeaseError> {
                authorize(c, &sid, &wid, epoch)?;
                let now = c.now_ms()?;
                Ok(record_artifact(
                    c,
                    &run_id,
                    &sid,
                    &art,
                    &kind,
                    &stored.key,
                    now,
                )?)
            })
            .await?;
        self.hub.notify(&step.run_id);
        Ok(r)
    }

    /// Reads an artifact of the run of a step this worker holds.
    pub async fn read_artifact(
        &self,
        worker_id: &str,
        step_id: &str,
        epoch: i64,
        name: &str,
    ) -> Result<bytes::Bytes, LeaseError> {
        validate_name(name).map_err(|_| LeaseError::NotFound)?;
        let (wid, sid, n) = (worker_id.to_string(), step_id.to_string(), name.to_string());
        let row = self
            .db
            .run(move |c| -> Result<_, LeaseError> {
                let (step, _) = authorize(c, &sid, &wid, epoch)?;
                Ok::<_, LeaseError>(db::artifacts::get(c, &step.run_id, &n)?)
            })
            .await?
            .ok_or(LeaseError::NotFound)?;
        self.store.get(&row.object_key).await.map_err(|e| match e {
            crate::artifacts::ArtifactError::NotFound { .. } => LeaseError::NotFound,
            other => LeaseError::Store(other.to_string()),
        })
    }

    /// Completes a step. A repeat of the same completion is accepted and changes nothing.
    /// With `claim_next`, also claims the worker's next step (one its `labels` allow) at once,
    /// without waiting: usually in the completion's own statement.
    pub async fn complete(
        &self,
        worker_id: &str,
        step_id: &str,
        req: CompleteRequest,
        labels: &[String],
    ) -> Result<Option<Assignment>, LeaseError> {
        let next = req.claim_next.then_some(labels);
        let claimed = self
            .record_completion(worker_id, step_id, req, next)
            .await?;
        self.grants.forget(worker_id, step_id);
        let Some(labels) = next else {
            return Ok(None);
        };
        let attempt = match claimed {
            Some((got, offset)) => self.granted(worker_id, got, offset)?,
            None => self.try_claim(worker_id, labels).await?,
        };
        Ok(match attempt {
            Attempt::Got(a) => Some(*a),
            Attempt::Empty | Attempt::Closed => None,
        })
    }

    /// Records a completion, and returns the next claim when the completion's statement made it.
    async fn record_completion(
        &self,
        worker_id: &str,
        step_id: &str,
        req: CompleteRequest,
        next: Option<&[String]>,
    ) -> Result<Option<(Claimed, u64)>, LeaseError> {
        let digest = completion_digest(&req);
        let (wid, sid) = (worker_id.to_string(), step_id.to_string());
        let kind = self.store.kind().as_str().to_string();
        // Artifacts a worker stored itself are under its lease's own keys.
        for a in &req.artifacts {
            crate::artifacts::attempt_key("r", step_id, req.epoch, &a.name)
                .map_err(|e| LeaseError::Invalid(e.to_string()))?;
        }
        // On Postgres, usually one statement to read and one to write (see `completion.rs`).
        if self.db.backend() == db::Backend::Postgres && req.artifacts.is_empty() {
            if let Some(done) = self
                .complete_pg(worker_id, step_id, &req, &digest, next)
                .await?
            {
                self.hub.notify(&done.run_id);
                (self.follow_up)(FollowUp {
                    run_id: done.run_id,
                    decided: Some(done.actions),
                });
                return Ok(done.claimed);
            }
        }
        let mirrors = self.mirrors.clone();
        // One transaction records the completion and decides what follows it.
        let first = self
            .db
            .tx(move |c| -> Result<_, LeaseError> {
                let repeat = |c: &mut db::Conn| -> Result<bool, LeaseError> {
                    let s = db::steps::get(c, &sid)?.ok_or(LeaseError::NotFound)?;
                    Ok(s.completion_digest.as_deref() == Some(digest.as_str())
                        && s.lease_epoch == req.epoch
                        && s.worker_id.as_deref() == Some(wid.as_str()))
                };
                // Locks the lease until this completion commits; the step is read after it.
                let held = match authorize_held(c, &sid, &wid, req.epoch) {
                    Ok(h) => h,
                    // Already completed (perhaps while this one waited for the lock).
                    Err(LeaseError::Stale) if repeat(c)? => return Ok(None),
                    Err(e) => return Err(e),
                };
                let (mut step, now) = (held.step, held.now_ms);
                let (run, mut state) = db::runs::lock_with_state(c, &step.run_id)?;
                let event = completed(&mut step, &run.status, &req, &digest, now);
                db::leases::delete(c, &sid)?;
                for a in &req.artifacts {
                    let known = db::artifacts::get(c, &run.id, &a.name)?;
                    if known.is_none_or(|k| k.sha256 != a.sha256) {
                        let key = crate::artifacts::attempt_key(&run.id, &sid, req.epoch, &a.name)
                            .map_err(|e| LeaseError::Invalid(e.to_string()))?;
                        record_artifact(c, &run.id, &sid, a, &kind, &key, now)?;
                    }
                }
                note_in_state(&mut state, &req, &wid);
                tracing::info!(run_id = %run.id, step_id = %sid, worker_id = %wid, lease_epoch = req.epoch, status = %step.status, "step completed");
                // The scheduler's decision, in this transaction when the run is going on;
                // otherwise the step is recorded and the scheduler looks at the run afterwards.
                if decides_now(c, &run, &state, &sid)? {
                    let actions = decide_in_tx(c, &run, state, Some(step), vec![event], &mirrors, now)
                        .map_err(sched_err)?;
                    return Ok(Some((run.id, Some(actions))));
                }
                db::steps::save(c, &step)?;
                let seq = db::runs::save_state_with_events(c, &state, 1)?;
                db::events::insert_numbered(c, &run.id, seq, &[event], now)?;
                Ok(Some((run.id, None)))
            })
            .await
            ?;
        if let Some((run_id, decided)) = first {
            self.hub.notify(&run_id);
            (self.follow_up)(FollowUp { run_id, decided });
        }
        Ok(None)
    }
}

/// Records one artifact row and its ARTIFACT_STORED event.
fn record_artifact(
    c: &mut db::Conn,
    run_id: &str,
    step_id: &str,
    a: &ArtifactRef,
    store: &str,
    key: &str,
    now: i64,
) -> Result<(), DbError> {
    db::artifacts::upsert(
        c,
        &ArtifactRow {
            id: new_id(),
            run_id: run_id.to_string(),
            step_id: Some(step_id.to_string()),
            name: a.name.clone(),
            kind: artifact_kind(&a.name).to_string(),
            size: a.size as i64,
            sha256: a.sha256.clone(),
            store: store.to_string(),
            object_key: key.to_string(),
            created_at: now,
        },
    )?;
    db::events::append(
        c,
        Some(run_id),
        Some(step_id),
        ev::ARTIFACT_STORED,
        &ev::artifact_stored(Some(step_id), &a.name, a.size, &a.sha256),
        now,
    )?;
    Ok(())
}

/// The artifact kind the old daemon used for a file name.
pub fn artifact_kind(name: &str) -> &'static str {
    let base = name.rsplit('/').next().unwrap_or(name);
    match base {
        "prompt.txt" => "prompt",
        "review-prompt.txt" => "review_prompt",
        "runner-notes.txt" => "runner_notes",
        "report.tsv" => "report",
        "summary.json" => "summary",
        n if n.starts_with("prompt.rewrite.") => "prompt_rewrite",
        n if n.ends_with(".bundle") => "git_bundle",
        n if n.ends_with("-impl.log") => "implementation_output",
        n if n.ends_with("-impl.tail.txt") => "implementation_tail",
        n if n.ends_with("-review.log") => "review_output",
        n if n.ends_with("-review.tail.txt") => "review_tail",
        n if n.ends_with("-verify.log") => "verification_output",
        n if n.ends_with("-verify.tail.txt") => "verification_tail",
        n if n.ends_with(".jsonl") => "agent_events",
        _ => "file",
    }
}
