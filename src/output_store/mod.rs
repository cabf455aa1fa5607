//! Live step output held by the process that serves the runs API: one append-only file per
//! step under `<data_dir>/output/<run_id>/<step_id>.log`. Writers append at an offset (a resent
//! chunk after a reconnect is absorbed, a gap is refused); readers read from any offset. The
//! run's output stream is its steps' files in step order. Files are written on blocking threads.
//! Readers position themselves in UTF-16 code units ([`units`]); the store remembers each
//! step's length in units so that only new bytes are ever counted. New output reaches open
//! streams through the [`Feed`].

mod feed;
mod units;

pub use feed::{frame, Feed, Frame, Place};

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek as _, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
pub use units::{utf16_units, Seek};

/// Bytes read at a time when counting units.
const SCAN: usize = 256 * 1024;

/// What can go wrong with step output.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The writer skipped bytes: it must resend from `expected`.
    #[error("output offset {given} is past the {expected} bytes held")]
    Gap { given: u64, expected: u64 },
    #[error("output file error: {0}")]
    Io(#[from] std::io::Error),
}

/// The per-step output files.
#[derive(Debug, Clone)]
pub struct OutputStore {
    root: PathBuf,
    /// Per step file: the bytes already counted and their UTF-16 units.
    counted: Arc<Mutex<HashMap<PathBuf, (u64, u64)>>>,
    feed: Arc<Feed>,
}

/// What an append did: the bytes held before and after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub before: u64,
    pub after: u64,
}

impl OutputStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        OutputStore {
            root: root.into(),
            counted: Arc::default(),
            feed: Arc::default(),
        }
    }

    /// The live fan-out of new output to the runs' readers.
    pub fn feed(&self) -> &Feed {
        &self.feed
    }

    fn path(&self, run_id: &str, step_id: &str) -> PathBuf {
        self.root.join(run_id).join(format!("{step_id}.log"))
    }

    /// Appends `content` written at `offset`. Bytes the store already holds are skipped, so a
    /// retried chunk is harmless. Blocking.
    pub fn append(
        &self,
        run_id: &str,
        step_id: &str,
        offset: u64,
        content: &[u8],
    ) -> Result<Appended, OutputError> {
        let path = self.path(run_id, step_id);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut f = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let held = f.metadata()?.len();
        if offset > held {
            return Err(OutputError::Gap {
                given: offset,
                expected: held,
            });
        }
        let end = offset + content.len() as u64;
        if end <= held {
            return Ok(Appended {
                before: held,
                after: held,
            });
        }
        let added = &content[(held - offset) as usize..];
        f.write_all(added)?;
        let mut map = self.counted.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get_mut(&path).filter(|c| c.0 == held) {
            *c = (end, c.1 + utf16_units(added));
        }
        Ok(Appended {
            before: held,
            after: end,
        })
    }

    /// How many bytes of a step's output are held. Blocking.
    pub fn size(&self, run_id: &str, step_id: &str) -> u64 {
        fs::metadata(self.path(run_id, step_id))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// How many UTF-16 code units a step's output holds. Only bytes not counted before are
    /// read. Blocking.
    pub fn units(&self, run_id: &str, step_id: &str) -> Result<u64, OutputError> {
        let path = self.path(run_id, step_id);
        let size = self.size(run_id, step_id);
        let (mut bytes, mut units) = self.counted_of(&path);
        if bytes > size {
            (bytes, units) = (0, 0);
        }
        while bytes < size {
            let chunk = self.read(run_id, step_id, bytes, SCAN)?;
            if chunk.is_empty() {
                break;
            }
            units += utf16_units(&chunk);
            bytes += chunk.len() as u64;
        }
        let mut map = self.counted.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(path, (bytes, units));
        Ok(units)
    }

    fn counted_of(&self, path: &Path) -> (u64, u64) {
        let map = self.counted.lock().unwrap_or_else(|p| p.into_inner());
        map.get(path).copied().unwrap_or((0, 0))
    }

    /// Where unit `target` of a step's output is: the byte and unit where the character
    /// holding it starts ([`Seek::Found`]), or the step's length in units when the target is
    /// past its end. Reads the file from its start. Blocking.
    pub fn seek(&self, run_id: &str, step_id: &str, target: u64) -> Result<Seek, OutputError> {
        let (mut bytes, mut units) = (0u64, 0u64);
        loop {
            let chunk = self.read(run_id, step_id, bytes, SCAN)?;
            if chunk.is_empty() {
                return Ok(Seek::After(units));
            }
            match units::seek_unit(&chunk, units, target) {
                Seek::Found(i, u) => return Ok(Seek::Found(bytes + i, u)),
                Seek::After(u) => units = u,
            }
            bytes += chunk.len() as u64;
        }
    }

    /// Reads up to `max` bytes of a step's output from `offset`. Blocking.
    pub fn read(
        &self,
        run_id: &str,
        step_id: &str,
        offset: u64,
        max: usize,
    ) -> Result<Vec<u8>, OutputError> {
        let path = self.path(run_id, step_id);
        let mut f = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        f.seek(SeekFrom::Start(offset))?;
        let mut buf = Vec::with_capacity(max.min(1 << 20));
        f.take(max as u64).read_to_end(&mut buf)?;
        Ok(buf)
    }

    /// The file holding a step's output (for uploading it as an artifact).
    pub fn file(&self, run_id: &str, step_id: &str) -> PathBuf {
        self.path(run_id, step_id)
    }

    /// The directory of all output.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Cuts `bytes` at the last UTF-8 character boundary, so an SSE frame never splits a character.
/// Returns the length of the longest valid prefix (all of it when the tail is complete).
pub fn utf8_boundary(bytes: &[u8]) -> usize {
    match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        // Invalid bytes in the middle: the caller sends them lossily rather than stalling.
        Err(_) => bytes.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_absorb_resent_bytes_and_refuse_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let s = OutputStore::new(dir.path());
        assert_eq!(s.append("r", "s", 0, b"hello ").unwrap().after, 6);
        // A resend that overlaps what is held only adds the new part.
        let a = s.append("r", "s", 3, b"lo world").unwrap();
        assert_eq!((a.before, a.after), (6, 11));
        assert_eq!(s.read("r", "s", 0, 100).unwrap(), b"hello world");
        match s.append("r", "s", 20, b"x") {
            Err(OutputError::Gap { expected: 11, .. }) => {}
            other => panic!("expected a gap error, got {other:?}"),
        }
        assert_eq!(s.size("r", "s"), 11);
        assert_eq!(s.read("r", "s", 6, 3).unwrap(), b"wor");
        assert!(s.read("r", "other", 0, 10).unwrap().is_empty());
    }

    #[test]
    fn units_count_new_bytes_and_seek_lands_on_characters() {
        let dir = tempfile::tempdir().unwrap();
        let s = OutputStore::new(dir.path());
        assert_eq!(s.units("r", "s").unwrap(), 0);
        s.append("r", "s", 0, "é日".as_bytes()).unwrap();
        assert_eq!(s.units("r", "s").unwrap(), 2);
        s.append("r", "s", 5, "🙂x".as_bytes()).unwrap();
        assert_eq!(s.units("r", "s").unwrap(), 5);
        assert_eq!(s.seek("r", "s", 3).unwrap(), Seek::Found(5, 2));
        assert_eq!(s.seek("r", "s", 4).unwrap(), Seek::Found(9, 4));
        assert_eq!(s.seek("r", "s", 9).unwrap(), Seek::After(5));
    }

    #[test]
    fn utf8_boundary_never_splits_a_character() {
        let text = "ok é".as_bytes();
        assert_eq!(utf8_boundary(text), text.len());
        assert_eq!(utf8_boundary(&text[..text.len() - 1]), 3);
    }
}
