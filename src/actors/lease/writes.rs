//! What a lease holder writes for its step besides the completion — live output, events,
//! artifacts — and the artifacts it reads (checkpoint bundles), each checked against the
//! step's current lease epoch first ([`StepWrites`]). Owned by the lease service, whose actor
//! forwards the holders' messages here; [`record_artifact`] is also the completion's.

use super::authorize::authorize;
use super::error::LeaseError;
use crate::actors::events::EventHub;
use crate::actors::run_progress::logs::copy_to_run_logs;
use crate::api::{ArtifactRef, OutputAck};
use crate::artifacts::run_logs::RunLogs;
use crate::artifacts::{validate_name, ArtifactStore};
use crate::db::models::{new_id, ArtifactRow};
use crate::db::{self, Db, DbError};
use crate::domain::artifact_kind::artifact_kind;
use crate::domain::events as ev;
use crate::output_store::{frame, OutputError, OutputStore, Place, Posted};

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

/// The holders' writes and what they need.
pub struct StepWrites {
    db: Db,
    hub: EventHub,
    output: OutputStore,
    store: ArtifactStore,
    /// Where copies of uploaded files go (a single host).
    run_logs: RunLogs,
}

impl StepWrites {
    pub fn new(
        db: Db,
        hub: EventHub,
        output: OutputStore,
        store: ArtifactStore,
        run_logs: RunLogs,
    ) -> Self {
        StepWrites {
            db,
            hub,
            output,
            store,
            run_logs,
        }
    }

    /// Appends live output of a step at `offset`; returns how many bytes are now held. When
    /// the run has readers, the new bytes' SSE frame is built here, once, and handed to all of
    /// them after the commit and the answer (they read nothing from storage for it).
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
        let (run_id, a, frame) = self
            .db
            .tx(move |c| -> Result<_, LeaseError> {
                let (step, _) = authorize(c, &sid, &wid, epoch)?;
                let io = |e: OutputError| match e {
                    OutputError::Gap { expected, .. } => LeaseError::OffsetGap(expected),
                    OutputError::Io(e) => LeaseError::Internal(e.to_string()),
                    OutputError::Db(e) => e.into(),
                };
                let run = step.run_id;
                let watched = out.feed().watched(&run);
                // Files count units before the append; the database holds them.
                let counted = match watched && !out.shared() {
                    true => Some(out.units(c, &run, &sid).map_err(io)?),
                    false => None,
                };
                let a = out
                    .append(c, &run, &sid, offset, content.as_bytes())
                    .map_err(io)?;
                let frame = match a.units_before.or(counted) {
                    Some(units) if watched && a.after > a.before => {
                        let start = match out.feed().step_start(&run, &sid) {
                            Some(s) => s,
                            None => out.step_start(c, &run, &sid).map_err(io)?,
                        };
                        let at = Place {
                            step_id: sid.clone(),
                            start,
                            byte: a.before,
                            unit: start + units,
                        };
                        frame(
                            &at,
                            &content.as_bytes()[(a.before - offset) as usize..],
                            true,
                        )
                    }
                    _ => None,
                };
                Ok((run, a, frame))
            })
            .await?;
        if a.after > a.before && self.output.shared() {
            // The other controllers' readers: they read the chunk from the database.
            self.output.announce(Posted {
                run_id: run_id.clone(),
                step_id: step_id.to_string(),
                byte: a.before,
            });
        }
        if let Some(f) = frame {
            // After the answer: the poster's reply is woken before the readers, so its latency
            // does not include their deliveries. Readers take frames in any order (one not at
            // their cursor sends them to storage), so a publish that comes late is harmless.
            let out = self.output.clone();
            tokio::spawn(async move { out.feed().publish(&run_id, f) });
        }
        Ok(OutputAck {
            next_offset: a.after,
        })
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
        let copy = bytes.clone();
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
        copy_to_run_logs(&self.db, &self.run_logs, &step.run_id, name, copy).await;
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
}

/// Records one artifact row and its ARTIFACT_STORED event.
pub fn record_artifact(
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
