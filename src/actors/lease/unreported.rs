//! Leases a worker never heard of: a claim's answer (or a completion's `next`) lost on the way
//! leaves a step leased to a worker that does not run it. The LeaseActor notes every grant,
//! forgets it when the step's completion or hand-back arrives or the worker's leases are taken
//! back, and checks each heartbeat's list of held leases against its notes: a lease that the
//! worker's heartbeats have left out for longer than `worker_offline_after_ms` is taken back
//! at once (LEASE_RELEASED, "not held by its worker") instead of at its expiry. Counting from
//! the first heartbeat that left it out, not from the grant, spares a lease whose answer was
//! still on its way, also when beats that waited in a paused controller's sockets arrive all
//! at once. A worker that does hold the lease after all finds it stale, as after any lost lease.

use crate::api::HeldLease;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A grant: its epoch, and since when heartbeats have left it out.
struct Grant {
    epoch: i64,
    missing_since: Option<Instant>,
}

/// Grants noted per worker, by step id.
#[derive(Default)]
pub struct Grants {
    by_worker: Mutex<HashMap<String, HashMap<String, Grant>>>,
}

impl Grants {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, Grant>>> {
        self.by_worker.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn note(&self, worker_id: &str, step_id: &str, epoch: i64) {
        let grant = Grant {
            epoch,
            missing_since: None,
        };
        (self.lock().entry(worker_id.to_string()).or_default()).insert(step_id.to_string(), grant);
    }

    pub fn forget(&self, worker_id: &str, step_id: &str) {
        let mut all = self.lock();
        if let Some(mine) = all.get_mut(worker_id) {
            mine.remove(step_id);
            if mine.is_empty() {
                all.remove(worker_id);
            }
        }
    }

    pub fn forget_worker(&self, worker_id: &str) {
        self.lock().remove(worker_id);
    }

    /// Notes which of `worker_id`'s grants this heartbeat (`held`) leaves out, and returns
    /// those left out for longer than `grace`, as (step id, epoch), forgetting them (taking
    /// them back is the caller's).
    pub fn unreported(
        &self,
        worker_id: &str,
        held: &[HeldLease],
        grace: Duration,
    ) -> Vec<(String, i64)> {
        self.unreported_at(worker_id, held, grace, Instant::now())
    }

    fn unreported_at(
        &self,
        worker_id: &str,
        held: &[HeldLease],
        grace: Duration,
        now: Instant,
    ) -> Vec<(String, i64)> {
        let mut all = self.lock();
        let Some(mine) = all.get_mut(worker_id) else {
            return Vec::new();
        };
        let mut lost = Vec::new();
        for (step, g) in mine.iter_mut() {
            if held
                .iter()
                .any(|h| h.step_id == *step && h.epoch == g.epoch)
            {
                g.missing_since = None;
                continue;
            }
            let since = *g.missing_since.get_or_insert(now);
            if now - since > grace {
                lost.push((step.clone(), g.epoch));
            }
        }
        for (step, _) in &lost {
            mine.remove(step);
        }
        if mine.is_empty() {
            all.remove(worker_id);
        }
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::Grants;
    use crate::api::HeldLease;
    use std::time::{Duration, Instant};

    fn held(step: &str, epoch: i64) -> HeldLease {
        HeldLease {
            step_id: step.into(),
            epoch,
        }
    }

    #[test]
    fn grants_left_out_longer_than_the_grace_are_unreported() {
        let g = Grants::default();
        for step in ["listed", "lost", "other_epoch", "completed", "back_again"] {
            g.note("w", step, 1);
        }
        g.forget("w", "completed");
        g.note("v", "someone_else", 1);
        let grace = Duration::from_secs(10);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let listed = [held("listed", 1), held("other_epoch", 2)];
        // The first beat that leaves a grant out only starts counting.
        assert!(g.unreported_at("w", &listed, grace, at(0)).is_empty());
        // Listed again: counting starts over.
        let with_back = [held("listed", 1), held("back_again", 1)];
        assert!(g.unreported_at("w", &with_back, grace, at(5)).is_empty());
        assert!(g.unreported_at("w", &listed, grace, at(8)).is_empty());
        let mut lost = g.unreported_at("w", &listed, grace, at(11));
        lost.sort();
        assert_eq!(
            lost,
            [("lost".to_string(), 1), ("other_epoch".to_string(), 1)],
            "left out since 0 s; back_again only since 8 s"
        );
        assert!(g.unreported_at("w", &listed, grace, at(12)).is_empty());
        assert_eq!(
            g.unreported_at("w", &listed, grace, at(19)),
            [("back_again".to_string(), 1)]
        );
        assert!(g.unreported_at("w", &[], grace, at(60)).is_empty(), "once");
        // A paused controller gets a worker's queued beats all at once: they span no time.
        g.note("w", "fresh", 3);
        for _ in 0..5 {
            assert!(g.unreported_at("w", &[], grace, at(61)).is_empty());
        }
        g.forget_worker("v");
        assert!(g.unreported_at("v", &[], grace, at(100)).is_empty());
    }
}
