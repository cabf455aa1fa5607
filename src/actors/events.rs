//! The event hub: events are persisted by whoever changes state, inside the same transaction;
//! after the commit the writer calls [`EventHub::notify`] and every SSE stream of that run
//! wakes up and reads what is new from the database. A wake-up carries no data, so a slow or
//! lagging subscriber can never lose an event: it always re-reads from its cursor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Fans out "run X changed" (new events or new output) to live streams.
#[derive(Clone, Default)]
pub struct EventHub {
    runs: Arc<Mutex<HashMap<String, watch::Sender<u64>>>>,
}

impl EventHub {
    pub fn new() -> Self {
        Self::default()
    }

    /// Wakes every stream of `run_id`.
    pub fn notify(&self, run_id: &str) {
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
