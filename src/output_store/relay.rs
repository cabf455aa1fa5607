//! Output another controller appended, made into frames for this controller's readers. The
//! controller that took a worker's chunk announces where it stored it (run, step, byte: a
//! notice of a few dozen bytes); here, if the run has readers, one task reads the chunk from
//! the database once and hands its frame to the [`Feed`](super::Feed), exactly as the
//! posting controller does for its own readers. Announcements that arrive together are read
//! together (one statement). A frame that is late, lost or out of order costs nothing but a
//! storage read: readers check that a frame starts at their cursor, and go to storage when it
//! does not (or when a wake-up of the run tells them to look).

use super::{frame, OutputStore, Place};
use crate::db::{self, Db, DbError};
use std::collections::HashMap;
use tokio::sync::mpsc;

/// Announcements read in one statement at most.
const BATCH: usize = 64;

/// Where output was appended: the run, the step, and the byte where the new chunk starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    pub run_id: String,
    pub step_id: String,
    pub byte: u64,
}

/// Starts the relay's task on the current runtime; announcements go to the sender.
pub(super) fn start(store: OutputStore, db: Db) -> mpsc::UnboundedSender<Posted> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(store, db, rx));
    tx
}

async fn run(store: OutputStore, db: Db, mut rx: mpsc::UnboundedReceiver<Posted>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        batch.retain(|p| store.feed().watched(&p.run_id));
        if !batch.is_empty() {
            relay(&store, &db, batch).await;
        }
    }
}

/// Reads the chunks of `batch` (and where their steps start, when the feed does not know)
/// and publishes their frames in the order they were announced.
async fn relay(store: &OutputStore, db: &Db, batch: Vec<Posted>) {
    let mut starts: HashMap<String, u64> = HashMap::new();
    let mut unknown: Vec<String> = Vec::new();
    for p in &batch {
        if starts.contains_key(&p.step_id) || unknown.contains(&p.step_id) {
            continue;
        }
        match store.feed().step_start(&p.run_id, &p.step_id) {
            Some(s) => {
                starts.insert(p.step_id.clone(), s);
            }
            None => unknown.push(p.step_id.clone()),
        }
    }
    let places: Vec<(String, u64)> = batch.iter().map(|p| (p.step_id.clone(), p.byte)).collect();
    let read = db
        .run(move |c| {
            let chunks = db::output::chunks(c, &places)?;
            let mut found = Vec::with_capacity(unknown.len());
            for step in unknown {
                let s = db::output::step_start(c, &step)?;
                found.push((step, s));
            }
            Ok::<_, DbError>((chunks, found))
        })
        .await;
    let (chunks, found) = match read {
        Ok(r) => r,
        Err(e) => {
            // The readers are woken by the run's notices and read storage then.
            tracing::warn!(error = %e, "cannot read output another controller stored");
            return;
        }
    };
    starts.extend(found);
    let mut chunks: HashMap<(String, u64), db::output::Chunk> = chunks
        .into_iter()
        .map(|c| ((c.step_id.clone(), c.byte_at), c))
        .collect();
    for p in batch {
        let (Some(ch), Some(&start)) = (
            chunks.remove(&(p.step_id.clone(), p.byte)),
            starts.get(&p.step_id),
        ) else {
            continue;
        };
        let at = Place {
            step_id: p.step_id,
            start,
            byte: ch.byte_at,
            unit: start + ch.unit_at,
        };
        if let Some(f) = frame(&at, &ch.content, true) {
            store.feed().publish(&p.run_id, f);
        }
    }
}
