//! Leases taken back from their workers — handed back (drain), lost with a worker (offline or
//! revoked), expired, or left by a single host's previous process — as they are recorded: one
//! event per lease (plus a step failure when its lost leases used up the step), one log line
//! each, and what a sweep did. The lease service takes them back (`service.rs`); `app` calls
//! [`release_all_at_restart`] at a single host's start.

use crate::db::events::NewEvent;
use crate::db::leases::{self, Requeued};
use crate::db::{self, DbError};
use crate::domain::events as ev;
use std::time::Duration;

/// What a sweep did: expired what was due, or gave every lease a fresh period after a pause.
pub enum Swept {
    Expired(Vec<Requeued>),
    Extended { paused: Duration, extended: usize },
}

/// One log line per lease taken back, naming the step, its worker and the epoch.
pub fn log_released(list: &[Requeued], reason: &str) {
    for r in list {
        tracing::info!(run_id = %r.run_id, step_id = %r.step_id, worker_id = %r.worker_id, lease_epoch = r.epoch, reason, "lease released");
    }
}

/// Records what happened to requeued leases as events (one per lease, plus a step failure).
pub fn record_requeued(
    c: &mut db::Conn,
    list: &[Requeued],
    event_type: &'static str,
    reason: &str,
    now: i64,
) -> Result<(), DbError> {
    for r in list {
        let payload = if event_type == ev::LEASE_EXPIRED {
            ev::lease_expired(&r.step_id, &r.worker_id, r.epoch)
        } else {
            ev::lease_released(&r.step_id, &r.worker_id, r.epoch, reason)
        };
        let mut events = vec![NewEvent {
            step_id: Some(r.step_id.clone()),
            event_type,
            payload,
        }];
        if r.failed {
            events.push(NewEvent {
                step_id: Some(r.step_id.clone()),
                event_type: ev::STEP_FAILED,
                payload: ev::step_failed(
                    &r.step_id,
                    None,
                    &format!("lost its lease {} times", r.infra_attempts),
                ),
            });
        }
        db::events::append_many(c, &r.run_id, &events, now)?;
    }
    Ok(())
}

/// A single host at start: its previous process and that process's runner are gone, so every
/// lease is taken back (counted as a lost lease) and recorded as released by the restart.
pub fn release_all_at_restart(c: &mut db::Conn, max_infra: i32) -> Result<Vec<Requeued>, DbError> {
    let list = leases::release_all_except(c, &[], max_infra)?;
    let now = c.now_ms()?;
    record_requeued(c, &list, ev::LEASE_RELEASED, "daemon restarted", now)?;
    Ok(list)
}
