//! Live step output in both stores, with the same answers: files (role single, SQLite) and
//! the database (controllers on Postgres, where every controller reads it). Appends absorb
//! resent bytes and refuse gaps; positions are UTF-16 code units, run-wide across steps; reads
//! cross the chunks appends stored; two writers racing on one step each store once.

use super::{seed, Store};
use loopd::db::{Backend, Db};
use loopd::output_store::{OutputError, OutputStore, Seek};

/// The store a process on this database uses, and what keeps its files.
fn store_of(db: &Db) -> (OutputStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let s = match db.backend() {
        Backend::Sqlite => OutputStore::new(dir.path().join("output")),
        Backend::Postgres => OutputStore::in_database(),
    };
    (s, dir)
}

pub fn output_appends_absorb_resends_refuse_gaps_and_read_across_chunks(s: Store) {
    let (run, steps) = seed(&s.db, "RUNNING", "", 2);
    let (out, _dir) = store_of(&s.db);
    let (r, a, b) = (run.id.as_str(), steps[0].as_str(), steps[1].as_str());
    let mut c = s.db.conn().unwrap();
    let c = &mut c;
    let mut append = |step: &str, offset: u64, text: &str| {
        c.write_tx(|c| out.append(c, r, step, offset, text.as_bytes()))
    };
    assert_eq!(append(a, 0, "hello ").unwrap().after, 6);
    // The same chunk again, and one overlapping what is held: only the new part is stored.
    let again = append(a, 0, "hello ").unwrap();
    assert_eq!((again.before, again.after), (6, 6));
    let a2 = append(a, 3, "lo wörld ").unwrap();
    assert_eq!((a2.before, a2.after), (6, 13));
    match append(a, 20, "x") {
        Err(OutputError::Gap { expected: 13, .. }) => {}
        other => panic!("expected a gap error, got {other:?}"),
    }
    append(a, 13, "🙂é日").unwrap();
    append(b, 0, "next").unwrap();
    let c = &mut s.db.conn().unwrap();
    assert_eq!(out.size(c, r, a).unwrap(), 22);
    assert_eq!(
        out.read(c, r, a, 0, 100).unwrap(),
        "hello wörld 🙂é日".as_bytes()
    );
    // From inside a chunk, across the next, cut at `max`.
    assert_eq!(out.read(c, r, a, 4, 6).unwrap(), "o wör".as_bytes());
    assert_eq!(out.read(c, r, a, 22, 10).unwrap(), b"");
    assert_eq!(out.units(c, r, a).unwrap(), 16);
    assert_eq!(out.units_of(c, r, &[b, a]).unwrap(), [4, 16]);
    assert_eq!(out.step_start(c, r, a).unwrap(), 0);
    assert_eq!(out.step_start(c, r, b).unwrap(), 16);
    // Unit 12 is the emoji's first half, 13 its second (the emoji again), 14 the é.
    assert_eq!(out.seek(c, r, a, 7).unwrap(), Seek::Found(7, 7));
    assert_eq!(out.seek(c, r, a, 12).unwrap(), Seek::Found(13, 12));
    assert_eq!(out.seek(c, r, a, 13).unwrap(), Seek::Found(13, 12));
    assert_eq!(out.seek(c, r, a, 14).unwrap(), Seek::Found(17, 14));
    assert_eq!(out.seek(c, r, a, 16).unwrap(), Seek::After(16));
    assert!(out.read(c, r, "no-such-step", 0, 10).unwrap().is_empty());
}

/// Two holders' posts of one step at once (a worker resending while its first post is still
/// being written): the step's row lock orders them, and each byte is stored once.
pub fn racing_appends_of_one_step_store_each_byte_once(s: Store) {
    let (run, steps) = seed(&s.db, "RUNNING", "", 1);
    let (out, _dir) = store_of(&s.db);
    let text: String = (0..200).map(|i| format!("line {i}\n")).collect();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (db, out, run, step, text) = (
                s.db.clone(),
                out.clone(),
                run.id.clone(),
                steps[0].clone(),
                text.clone(),
            );
            std::thread::spawn(move || {
                let mut c = db.conn().unwrap();
                let mut at = 0;
                for piece in text.as_bytes().chunks(97) {
                    // Each writer posts the whole stream from its start: most of it is held.
                    let r = c.write_tx(|c| {
                        loopd::db::steps::get(c, &step)?;
                        out.append(c, &run, &step, at, piece)
                    });
                    match r {
                        Ok(_) => at += piece.len() as u64,
                        Err(e) => panic!("append: {e}"),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let c = &mut s.db.conn().unwrap();
    let held = out.read(c, &run.id, &steps[0], 0, 1 << 20).unwrap();
    assert_eq!(String::from_utf8(held).unwrap(), text);
}
