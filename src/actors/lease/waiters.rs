//! The long-poll claimers waiting for work, owned by the LeaseActor. When a step is queued the
//! actor wakes one waiter that may run it (the run's previous worker first), not all of them:
//! one claim transaction per queued step instead of one per idle worker. A waiter that was
//! woken but took another step passes the wake-up on, so no queued step is left unnoticed.

use crate::db::models::labels_match;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::sync::oneshot;

struct Waiter {
    id: u64,
    worker_id: String,
    labels: Vec<String>,
    wake: oneshot::Sender<()>,
}

/// FIFO of waiting claimers.
#[derive(Default)]
pub struct WaitQueue {
    waiters: Mutex<VecDeque<Waiter>>,
    next_id: AtomicU64,
}

/// A registered waiter: its id (to deregister) and the wake-up it awaits.
pub struct Ticket {
    pub id: u64,
    pub woken: oneshot::Receiver<()>,
}

impl WaitQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Waiter>> {
        match self.waiters.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Registers a claimer before it looks at the queue, so a step queued in between wakes it.
    pub fn register(&self, worker_id: &str, labels: &[String]) -> Ticket {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock().push_back(Waiter {
            id,
            worker_id: worker_id.to_string(),
            labels: labels.to_vec(),
            wake: tx,
        });
        Ticket { id, woken: rx }
    }

    pub fn remove(&self, id: u64) {
        self.lock().retain(|w| w.id != id);
    }

    /// Wakes one waiter that may run a step requiring `required` (encoded labels), preferring
    /// `preferred`. Returns the woken worker's id.
    pub fn wake(&self, required: &str, preferred: Option<&str>) -> Option<String> {
        let mut q = self.lock();
        let pos = preferred
            .and_then(|p| {
                q.iter()
                    .position(|w| w.worker_id == p && labels_match(required, &w.labels))
            })
            .or_else(|| q.iter().position(|w| labels_match(required, &w.labels)))?;
        let w = q.remove(pos)?;
        let _ = w.wake.send(());
        Some(w.worker_id)
    }

    /// Wakes the first waiter whatever its labels (a hand-on of a wake-up it did not use).
    pub fn wake_any(&self) {
        if let Some(w) = self.lock().pop_front() {
            let _ = w.wake.send(());
        }
    }

    /// Wakes everyone (a change that may make many steps claimable, e.g. a resumed run).
    pub fn wake_all(&self) {
        for w in self.lock().drain(..) {
            let _ = w.wake.send(());
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_the_preferred_worker_then_a_matching_one() {
        let q = WaitQueue::default();
        let mut a = q.register("a", &[]);
        let mut b = q.register("b", &["gpu".to_string()]);
        assert_eq!(q.wake("", Some("b")).as_deref(), Some("b"));
        assert!(b.woken.try_recv().is_ok());
        assert!(a.woken.try_recv().is_err());
        // A gpu step cannot wake `a`.
        assert_eq!(q.wake("gpu", None), None);
        assert_eq!(q.wake("", None).as_deref(), Some("a"));
        assert!(q.is_empty());
    }
}
