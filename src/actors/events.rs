//! The event hub: events are persisted by whoever changes state, inside the same transaction;
//! after the commit the writer calls [`EventHub::notify`] and every SSE stream of that run
//! wakes up and reads what is new from the database. A wake-up carries no data, so a slow or
//! lagging subscriber can never lose an event: it always re-reads from its cursor. With
//! several controllers, a wake-up is also sent to the others (a notice through `peers`, wired
//! by `app`), whose streams of the run read the database as this one's do.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::watch;

/// What a wake-up of a run does beyond this process (see [`EventHub::forward_to`]).
pub type Forward = Arc<dyn Fn(&str) + Send + Sync>;

/// Fans out "run X changed" (new events or new output) to live streams.
#[derive(Clone, Default)]
pub struct EventHub {
    runs: Arc<Mutex<HashMap<String, watch::Sender<u64>>>>,
    forward: Arc<OnceLock<Forward>>,
}

impl EventHub {
    pub fn new() -> Self {
        Self::default()
    }

    /// Also tells `f` of every wake-up from now on (once: the other controllers).
    pub fn forward_to(&self, f: Forward) {
        let _ = self.forward.set(f);
    }

    /// Wakes every stream of `run_id`, here and on the other controllers.
    pub fn notify(&self, run_id: &str) {
        self.notify_here(run_id);
        if let Some(f) = self.forward.get() {
            f(run_id);
        }
    }

    /// Wakes every stream of every run here (wake-ups from elsewhere may have been missed).
    pub fn notify_every_run_here(&self) {
        let map = match self.runs.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        for tx in map.values() {
            tx.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Wakes every stream of `run_id` in this process (a wake-up another controller sent).
    pub fn notify_here(&self, run_id: &str) {
        let mut map = match self.runs.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(tx) = map.get(run_id) {
            if tx.receiver_count() == 0 {
                map.remove(run_id);
            } else {
                tx.send_modify(|v| *v = v.wrapping_add(1));
            }
        }
    }

    /// Wakes the streams of every run in `run_ids`.
    pub fn notify_all<'a>(&self, run_ids: impl IntoIterator<Item = &'a String>) {
        for id in run_ids {
            self.notify(id);
        }
    }

    /// A receiver that changes whenever `run_id` is notified.
    pub fn subscribe(&self, run_id: &str) -> watch::Receiver<u64> {
        let mut map = match self.runs.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(run_id.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_subscriber_wakes_on_its_run_only() {
        let hub = EventHub::new();
        let mut a = hub.subscribe("a");
        let b = hub.subscribe("b");
        hub.notify("a");
        tokio::time::timeout(Duration::from_secs(1), a.changed())
            .await
            .expect("a woke")
            .unwrap();
        assert!(!b.has_changed().unwrap());
    }
}
