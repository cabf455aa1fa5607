//! How many artifact uploads each worker has in flight through this controller, so that one
//! worker (or a stolen worker token) cannot hold every connection and buffer of the
//! controller with parallel uploads. Owned by `AppState`; the upload handler takes a
//! [`UploadPermit`] before it reads a byte of the body and gives it back when it drops it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Uploads in flight per worker, up to a cap.
#[derive(Debug)]
pub struct UploadSlots {
    per_worker: usize,
    held: Mutex<HashMap<String, usize>>,
}

/// One upload's place; released on drop.
#[derive(Debug)]
pub struct UploadPermit {
    slots: Arc<UploadSlots>,
    worker: String,
}

impl UploadSlots {
    pub fn new(per_worker: usize) -> Arc<UploadSlots> {
        Arc::new(UploadSlots {
            per_worker,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more upload of `worker`, or `None` when it has `per_worker` already.
    pub fn try_take(self: &Arc<Self>, worker: &str) -> Option<UploadPermit> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(worker.to_string()).or_insert(0);
        if *n >= self.per_worker {
            return None;
        }
        *n += 1;
        Some(UploadPermit {
            slots: self.clone(),
            worker: worker.to_string(),
        })
    }

    /// Uploads `worker` has in flight.
    pub fn in_flight(&self, worker: &str) -> usize {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.get(worker).copied().unwrap_or(0)
    }
}

impl Drop for UploadPermit {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.worker) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.worker);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_gets_its_own_places_and_dropping_a_permit_frees_one() {
        let slots = UploadSlots::new(2);
        let a1 = slots.try_take("a").expect("first");
        let _a2 = slots.try_take("a").expect("second");
        assert!(slots.try_take("a").is_none(), "a third is refused");
        let _b = slots.try_take("b").expect("another worker is not held up");
        drop(a1);
        assert_eq!(slots.in_flight("a"), 1);
        assert!(slots.try_take("a").is_some());
    }
}
