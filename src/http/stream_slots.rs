//! How many `/runs/{id}/output` streams are open, per run and per client address, so that no
//! run and no single client can hold every connection and task of the server. Owned by
//! `AppState`; the output handler takes a [`StreamSlot`] before it opens a stream, and the
//! slot is given back when the stream ends or its client goes away.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Open streams per run and per client, up to two caps.
#[derive(Debug)]
pub struct StreamSlots {
    per_run: usize,
    per_client: usize,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    runs: HashMap<String, usize>,
    clients: HashMap<IpAddr, usize>,
}

/// Which cap a new stream would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    Run(usize),
    Client(usize),
}

/// One open stream's place; released on drop.
#[derive(Debug)]
pub struct StreamSlot {
    slots: Arc<StreamSlots>,
    run: String,
    client: Option<IpAddr>,
}

fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl StreamSlots {
    pub fn new(per_run: usize, per_client: usize) -> Arc<StreamSlots> {
        Arc::new(StreamSlots {
            per_run,
            per_client,
            held: Mutex::default(),
        })
    }

    /// A place for one more stream of `run` for `client`, unless a cap is reached.
    pub fn try_take(
        self: &Arc<Self>,
        run: &str,
        client: Option<IpAddr>,
    ) -> Result<StreamSlot, Full> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held.runs.get(run).copied().unwrap_or(0) >= self.per_run {
            return Err(Full::Run(self.per_run));
        }
        if let Some(ip) = client {
            if held.clients.get(&ip).copied().unwrap_or(0) >= self.per_client {
                return Err(Full::Client(self.per_client));
            }
            *held.clients.entry(ip).or_insert(0) += 1;
        }
        *held.runs.entry(run.to_string()).or_insert(0) += 1;
        Ok(StreamSlot {
            slots: self.clone(),
            run: run.to_string(),
            client,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().unwrap_or_else(|p| p.into_inner());
        release(&mut held.runs, &self.run);
        if let Some(ip) = &self.client {
            release(&mut held.clients, ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_caps_hold_and_a_dropped_slot_frees_its_place() {
        let slots = StreamSlots::new(2, 3);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let r1 = slots.try_take("r", Some(a)).expect("first");
        let _r2 = slots.try_take("r", Some(b)).expect("second");
        assert_eq!(slots.try_take("r", Some(b)).unwrap_err(), Full::Run(2));
        let _s1 = slots.try_take("s", Some(a)).expect("another run");
        let _s2 = slots.try_take("s", Some(a)).expect("a's third");
        assert_eq!(slots.try_take("t", Some(a)).unwrap_err(), Full::Client(3));
        drop(r1);
        assert!(slots.try_take("t", Some(a)).is_ok(), "a's slot came back");
        assert!(
            slots.try_take("r", Some(b)).is_ok(),
            "the run's slot came back"
        );
        assert!(slots.held.lock().unwrap().runs.len() <= 3);
    }
}
