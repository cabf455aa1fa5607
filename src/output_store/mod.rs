//! Live step output held by the process that serves the runs API, in one of two places:
//!
//! - **Files** (role single): one append-only file per step under
//!   `<data_dir>/output/<run_id>/<step_id>.log`, written on blocking threads. The store
//!   remembers each step's length in UTF-16 units so that only new bytes are ever counted.
//! - **The database** (role controller on Postgres, `db::output`): chunks and per-step totals
//!   that every controller on the database reads, so a client tailing through one controller
//!   sees what a worker posted through another.
//!
//! Writers append at a byte offset (a resent chunk after a reconnect is absorbed, a gap is
//! refused); readers read from any offset. The run's output stream is its steps' outputs in
//! step order. Readers position themselves in UTF-16 code units ([`units`]). New output
//! reaches open streams through the [`Feed`]: built where it was posted, and on the other
//! controllers by the [`relay`] (announced by a notice, read once per controller).
//! Every call takes the caller's connection (the file store does not use it) and blocks.

mod feed;
mod relay;
mod units;

pub use feed::{frame, Feed, Frame, Place};
pub use relay::Posted;

use crate::db::{self, Conn, Db, DbError};
use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek as _, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
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
    #[error("output in the database: {0}")]
    Db(#[from] DbError),
}

impl From<OutputError> for DbError {
    fn from(e: OutputError) -> DbError {
        match e {
            OutputError::Db(e) => e,
            other => DbError::Join(other.to_string()),
        }
    }
}

/// Where the output is kept.
#[derive(Debug, Clone)]
enum Kind {
    Files(PathBuf),
    Database,
}

/// What [`OutputStore::announce`] does (wired by `app`: a notice to the other controllers).
pub type Announce = Arc<dyn Fn(Posted) + Send + Sync>;

#[derive(Default)]
struct Hooks {
    announce: OnceLock<Announce>,
    relay: OnceLock<tokio::sync::mpsc::UnboundedSender<Posted>>,
}

/// The step output store (see the module's header).
#[derive(Clone)]
pub struct OutputStore {
    kind: Kind,
    /// Files: per step file, the bytes already counted and their UTF-16 units.
    counted: Arc<Mutex<HashMap<PathBuf, (u64, u64)>>>,
    feed: Arc<Feed>,
    hooks: Arc<Hooks>,
}

impl std::fmt::Debug for OutputStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputStore")
            .field("kind", &self.kind)
            .finish()
    }
}

/// What an append did: the bytes held before and after it, and (when known without counting)
/// the step's UTF-16 units before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub before: u64,
    pub after: u64,
    pub units_before: Option<u64>,
}

impl OutputStore {
    /// Output in files under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self::of(Kind::Files(root.into()))
    }

    /// Output in the (Postgres) database, shared by the controllers on it.
    pub fn in_database() -> Self {
        Self::of(Kind::Database)
    }

    fn of(kind: Kind) -> Self {
        OutputStore {
            kind,
            counted: Arc::default(),
            feed: Arc::default(),
            hooks: Arc::default(),
        }
    }

    /// Whether the output is in the database (shared with other controllers).
    pub fn shared(&self) -> bool {
        matches!(self.kind, Kind::Database)
    }

    /// The live fan-out of new output to the runs' readers.
    pub fn feed(&self) -> &Feed {
        &self.feed
    }

    /// Sets what [`announce`](Self::announce) does (once).
    pub fn on_append(&self, f: Announce) {
        let _ = self.hooks.announce.set(f);
    }

    /// Tells the other controllers that output was appended here (after the commit).
    pub fn announce(&self, p: Posted) {
        if let Some(f) = self.hooks.announce.get() {
            f(p);
        }
    }

    /// Starts the relay that builds frames, here, of output other controllers announce
    /// (call from a Tokio runtime; once).
    pub fn start_relay(&self, db: Db) {
        if self.hooks.relay.get().is_none() {
            let _ = self.hooks.relay.set(relay::start(self.clone(), db));
        }
    }

    /// Output another controller appended: its frame is read (once) and handed to this
    /// controller's readers of the run, if it has any. Does not block.
    pub fn posted_elsewhere(&self, p: Posted) {
        if let Some(tx) = self.hooks.relay.get() {
            if self.feed.watched(&p.run_id) {
                let _ = tx.send(p);
            }
        }
    }

    fn path(root: &Path, run_id: &str, step_id: &str) -> PathBuf {
        root.join(run_id).join(format!("{step_id}.log"))
    }

    /// Appends `content` written at `offset`. Bytes the store already holds are skipped, so a
    /// retried chunk is harmless. In the database, run it in the transaction that checked the
    /// writer's lease (the step's row lock orders the appends).
    pub fn append(
        &self,
        c: &mut Conn,
        run_id: &str,
        step_id: &str,
        offset: u64,
        content: &[u8],
    ) -> Result<Appended, OutputError> {
        let root = match &self.kind {
            Kind::Files(root) => root,
            Kind::Database => return append_in_database(c, run_id, step_id, offset, content),
        };
        let path = Self::path(root, run_id, step_id);
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
                units_before: None,
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
            units_before: None,
        })
    }

    /// How many bytes of a step's output are held.
    pub fn size(&self, c: &mut Conn, run_id: &str, step_id: &str) -> Result<u64, OutputError> {
        match &self.kind {
            Kind::Files(root) => Ok(fs::metadata(Self::path(root, run_id, step_id))
                .map(|m| m.len())
                .unwrap_or(0)),
            Kind::Database => Ok(db::output::size(c, step_id)?.bytes),
        }
    }

    /// How many UTF-16 code units a step's output holds. Files: only bytes not counted before
    /// are read.
    pub fn units(&self, c: &mut Conn, run_id: &str, step_id: &str) -> Result<u64, OutputError> {
        let root = match &self.kind {
            Kind::Files(root) => root,
            Kind::Database => return Ok(db::output::size(c, step_id)?.units),
        };
        let path = Self::path(root, run_id, step_id);
        let size = self.size(c, run_id, step_id)?;
        let (mut bytes, mut units) = self.counted_of(&path);
        if bytes > size {
            (bytes, units) = (0, 0);
        }
        while bytes < size {
            let chunk = self.read(c, run_id, step_id, bytes, SCAN)?;
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

    /// The UTF-16 code units of each of `steps` (a run's, in any order).
    pub fn units_of(
        &self,
        c: &mut Conn,
        run_id: &str,
        steps: &[&str],
    ) -> Result<Vec<u64>, OutputError> {
        match &self.kind {
            Kind::Files(_) => steps.iter().map(|s| self.units(c, run_id, s)).collect(),
            Kind::Database => {
                let held: HashMap<String, db::output::Held> =
                    db::output::of_run(c, run_id)?.into_iter().collect();
                Ok(steps
                    .iter()
                    .map(|s| held.get(*s).map_or(0, |h| h.units))
                    .collect())
            }
        }
    }

    /// The run-wide position (UTF-16 units) where `step_id`'s output starts: the output of the
    /// run's steps before it.
    pub fn step_start(
        &self,
        c: &mut Conn,
        run_id: &str,
        step_id: &str,
    ) -> Result<u64, OutputError> {
        if let Kind::Database = self.kind {
            return Ok(db::output::step_start(c, step_id)?);
        }
        let steps = db::steps::for_run(c, run_id)?;
        let mut start = 0;
        for s in steps.iter().take_while(|s| s.id != step_id) {
            start += self.units(c, run_id, &s.id)?;
        }
        Ok(start)
    }

    fn counted_of(&self, path: &Path) -> (u64, u64) {
        let map = self.counted.lock().unwrap_or_else(|p| p.into_inner());
        map.get(path).copied().unwrap_or((0, 0))
    }

    /// Where unit `target` of a step's output is: the byte and unit where the character
    /// holding it starts ([`Seek::Found`]), or the step's length in units when the target is
    /// past its end. Files: read from the start; the database: only the chunk holding it.
    pub fn seek(
        &self,
        c: &mut Conn,
        run_id: &str,
        step_id: &str,
        target: u64,
    ) -> Result<Seek, OutputError> {
        if let Kind::Database = self.kind {
            return Ok(match db::output::chunk_at_unit(c, step_id, target)? {
                None => Seek::After(0),
                Some(ch) => match units::seek_unit(&ch.content, ch.unit_at, target) {
                    Seek::Found(i, u) => Seek::Found(ch.byte_at + i, u),
                    after => after,
                },
            });
        }
        let (mut bytes, mut units) = (0u64, 0u64);
        loop {
            let chunk = self.read(c, run_id, step_id, bytes, SCAN)?;
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

    /// Reads up to `max` bytes of a step's output from `offset`.
    pub fn read(
        &self,
        c: &mut Conn,
        run_id: &str,
        step_id: &str,
        offset: u64,
        max: usize,
    ) -> Result<Vec<u8>, OutputError> {
        let root = match &self.kind {
            Kind::Files(root) => root,
            Kind::Database => return Ok(db::output::read(c, step_id, offset, max)?),
        };
        let path = Self::path(root, run_id, step_id);
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
}

/// [`OutputStore::append`] in the database: the step's totals are read under its row lock,
/// and only what it does not hold yet is stored.
fn append_in_database(
    c: &mut Conn,
    run_id: &str,
    step_id: &str,
    offset: u64,
    content: &[u8],
) -> Result<Appended, OutputError> {
    let held = db::output::held(c, step_id)?.ok_or(DbError::NotFound)?;
    if offset > held.bytes {
        return Err(OutputError::Gap {
            given: offset,
            expected: held.bytes,
        });
    }
    let end = offset + content.len() as u64;
    let mut done = Appended {
        before: held.bytes,
        after: held.bytes,
        units_before: Some(held.units),
    };
    if end > held.bytes {
        let added = &content[(held.bytes - offset) as usize..];
        db::output::append(c, run_id, step_id, held, added, utf16_units(added))?;
        done.after = end;
    }
    Ok(done)
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

    /// A connection for the calls' signature (the file store does not use it).
    fn conn(dir: &Path) -> Conn {
        Db::open_sqlite(&dir.join("loopd.db"), 1)
            .and_then(|db| db.conn())
            .expect("a SQLite connection")
    }

    #[test]
    fn appends_absorb_resent_bytes_and_refuse_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let s = OutputStore::new(dir.path().join("output"));
        let c = &mut conn(dir.path());
        assert_eq!(s.append(c, "r", "s", 0, b"hello ").unwrap().after, 6);
        // A resend that overlaps what is held only adds the new part.
        let a = s.append(c, "r", "s", 3, b"lo world").unwrap();
        assert_eq!((a.before, a.after), (6, 11));
        assert_eq!(s.read(c, "r", "s", 0, 100).unwrap(), b"hello world");
        match s.append(c, "r", "s", 20, b"x") {
            Err(OutputError::Gap { expected: 11, .. }) => {}
            other => panic!("expected a gap error, got {other:?}"),
        }
        assert_eq!(s.size(c, "r", "s").unwrap(), 11);
        assert_eq!(s.read(c, "r", "s", 6, 3).unwrap(), b"wor");
        assert!(s.read(c, "r", "other", 0, 10).unwrap().is_empty());
    }

    #[test]
    fn units_count_new_bytes_and_seek_lands_on_characters() {
        let dir = tempfile::tempdir().unwrap();
        let s = OutputStore::new(dir.path().join("output"));
        let c = &mut conn(dir.path());
        assert_eq!(s.units(c, "r", "s").unwrap(), 0);
        s.append(c, "r", "s", 0, "é日".as_bytes()).unwrap();
        assert_eq!(s.units(c, "r", "s").unwrap(), 2);
        s.append(c, "r", "s", 5, "🙂x".as_bytes()).unwrap();
        assert_eq!(s.units(c, "r", "s").unwrap(), 5);
        assert_eq!(s.seek(c, "r", "s", 3).unwrap(), Seek::Found(5, 2));
        assert_eq!(s.seek(c, "r", "s", 4).unwrap(), Seek::Found(9, 4));
        assert_eq!(s.seek(c, "r", "s", 9).unwrap(), Seek::After(5));
    }

    #[test]
    fn utf8_boundary_never_splits_a_character() {
        let text = "ok é".as_bytes();
        assert_eq!(utf8_boundary(text), text.len());
        assert_eq!(utf8_boundary(&text[..text.len() - 1]), 3);
    }
}
