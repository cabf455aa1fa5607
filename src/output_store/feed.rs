//! Live output fan-out. When a chunk of a step's output is appended, its SSE frame is built
//! once and handed to every open `/runs/{id}/output` stream of the run through a broadcast
//! channel, so a thousand readers cost one serialisation and no storage read per chunk. The
//! channel holds only the last few frames: a reader that falls behind, or finds a frame that
//! does not start at its cursor, reads from the store instead (no gap, no repeat).

use super::units::utf16_units;
use super::utf8_boundary;
use crate::api::OutputFrame;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Frames a run's channel keeps for readers that are momentarily busy; past that they lag
/// and catch up from the store. Frames are at most one posted chunk each.
const KEPT: usize = 32;

/// A place in a run's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub step_id: String,
    /// Run-wide units before the step.
    pub start: u64,
    /// Byte in the step's output.
    pub byte: u64,
    /// Run-wide units before `byte`.
    pub unit: u64,
}

/// One SSE frame of output, ready to send: it covers `at` up to `next`.
#[derive(Debug)]
pub struct Frame {
    pub at: Place,
    pub next: Place,
    pub sse: Bytes,
}

/// The frame of `chunk`, read at `at`; `None` when `chunk` is only the start of a character
/// still being written. A frame never splits a character: an incomplete one at the end waits
/// for the next frame, unless `whole` (nothing more will come), when such bytes are sent as
/// they are (replacement characters).
pub fn frame(at: &Place, chunk: &[u8], whole: bool) -> Option<Frame> {
    let cut = match utf8_boundary(chunk) {
        0 if whole || chunk.len() >= 4 => chunk.len(),
        0 => return None,
        n => n,
    };
    let piece = &chunk[..cut];
    let end = at.unit + utf16_units(piece);
    let f = OutputFrame {
        step_id: at.step_id.clone(),
        offset: at.unit,
        content: String::from_utf8_lossy(piece).into_owned(),
    };
    let data = serde_json::to_string(&f).unwrap_or_default();
    let sse = Bytes::from(format!("event: output\ndata: {data}\nid: {end}\n\n"));
    let next = Place {
        byte: at.byte + cut as u64,
        unit: end,
        ..at.clone()
    };
    Some(Frame {
        at: at.clone(),
        next,
        sse,
    })
}

struct RunFeed {
    tx: broadcast::Sender<Arc<Frame>>,
    /// The step last published and its run-wide start (earlier steps never grow again).
    step: Option<(String, u64)>,
}

/// The channels of the runs that have readers.
#[derive(Default)]
pub struct Feed {
    runs: Mutex<HashMap<String, RunFeed>>,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("runs", &self.lock().len())
            .finish()
    }
}

impl Feed {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, RunFeed>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The frames published for `run_id` from now on.
    pub fn subscribe(&self, run_id: &str) -> broadcast::Receiver<Arc<Frame>> {
        let mut map = self.lock();
        map.entry(run_id.to_string())
            .or_insert_with(|| RunFeed {
                tx: broadcast::channel(KEPT).0,
                step: None,
            })
            .tx
            .subscribe()
    }

    /// Whether `run_id` has readers (a run without is forgotten).
    pub fn watched(&self, run_id: &str) -> bool {
        let mut map = self.lock();
        match map.get(run_id) {
            Some(f) if f.tx.receiver_count() > 0 => true,
            Some(_) => {
                map.remove(run_id);
                false
            }
            None => false,
        }
    }

    /// The run-wide start of `step_id`, when it is the step last published.
    pub fn step_start(&self, run_id: &str, step_id: &str) -> Option<u64> {
        let map = self.lock();
        match &map.get(run_id)?.step {
            Some((s, start)) if s == step_id => Some(*start),
            _ => None,
        }
    }

    /// Hands `frame` to every reader of `run_id`.
    pub fn publish(&self, run_id: &str, frame: Frame) {
        let mut map = self.lock();
        if let Some(f) = map.get_mut(run_id) {
            f.step = Some((frame.at.step_id.clone(), frame.at.start));
            // No receiver left: nothing to do (the next `watched` forgets the run).
            let _ = f.tx.send(Arc::new(frame));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_built_once_and_every_reader_gets_the_same_bytes() {
        let feed = Feed::default();
        assert!(!feed.watched("r"));
        let (mut a, mut b) = (feed.subscribe("r"), feed.subscribe("r"));
        assert!(feed.watched("r"));
        let at = Place {
            step_id: "s".into(),
            start: 3,
            byte: 10,
            unit: 7,
        };
        let f = frame(&at, "é🙂".as_bytes(), true).expect("a frame");
        assert_eq!((f.next.byte, f.next.unit), (16, 10));
        feed.publish("r", f);
        let (x, y) = (a.try_recv().unwrap(), b.try_recv().unwrap());
        assert!(Arc::ptr_eq(&x, &y));
        let text = std::str::from_utf8(&x.sse).unwrap();
        assert!(
            text.contains("\"offset\":7") && text.ends_with("id: 10\n\n"),
            "{text}"
        );
        assert_eq!(feed.step_start("r", "s"), Some(3));
        drop((a, b));
        assert!(!feed.watched("r"), "a run without readers is forgotten");
    }

    #[test]
    fn an_incomplete_character_waits_unless_nothing_more_comes() {
        let at = Place {
            step_id: "s".into(),
            start: 0,
            byte: 0,
            unit: 0,
        };
        let emoji = "🙂".as_bytes();
        assert!(frame(&at, &emoji[..2], false).is_none());
        let f = frame(&at, &[b'a', emoji[0]], false).expect("the complete part");
        assert_eq!(f.next.byte, 1);
    }
}
