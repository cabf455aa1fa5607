//! Postgres: the snapshots claims keep for their completions. A claim reads what its step's
//! completion will likely decide from; the completion takes it and decides without reading
//! again (`complete_pg.rs`). Bounded by entries and bytes. Owned by the lease service.

use crate::db::fast;
use std::collections::HashMap;

/// Postgres: what each step's completion will likely decide from, as its claim read it, taken
/// by the completion. Bounded by entries and by bytes (a verification's snapshot carries the
/// watchdog's implementation steps with their output tails): a snapshot that does not fit is
/// not kept, and its completion reads a fresh one.
#[derive(Debug)]
pub struct Kept<T> {
    map: HashMap<String, (T, usize)>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl<T> Kept<T> {
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Kept {
            map: HashMap::new(),
            bytes: 0,
            max_entries,
            max_bytes,
        }
    }

    /// Keeps `value` (about `size` bytes) for `id`, replacing what `id` had. When it does not
    /// fit, everything kept is dropped first: the entries of steps whose completion never came
    /// (a lost lease, a cancelled run) would otherwise fill the room for good.
    pub fn keep(&mut self, id: &str, value: T, size: usize) {
        self.take(id);
        if self.map.len() >= self.max_entries || self.bytes + size > self.max_bytes {
            self.map.clear();
            self.bytes = 0;
        }
        if size <= self.max_bytes {
            self.bytes += size;
            self.map.insert(id.to_string(), (value, size));
        }
    }

    pub fn take(&mut self, id: &str) -> Option<T> {
        let (value, size) = self.map.remove(id)?;
        self.bytes -= size;
        Some(value)
    }
}

/// About how many bytes a snapshot holds.
pub fn snapshot_size(s: &fast::Snapshot) -> usize {
    let len = |t: &Option<String>| t.as_ref().map_or(0, String::len);
    let steps: usize = (s.inputs.recent_impls.iter())
        .chain(&s.inputs.succeeded_impls)
        .map(|r| 128 + len(&r.output_tail) + len(&r.prompt))
        .sum();
    4096 + len(&s.step.output_tail) + len(&s.step.prompt) + steps
}

#[cfg(test)]
mod tests {
    use super::Kept;

    #[test]
    fn kept_snapshots_stay_within_their_entries_and_bytes() {
        let mut k = Kept::new(2, 100);
        k.keep("a", 1, 60);
        k.keep("a", 2, 50);
        assert_eq!(k.bytes, 50, "replaced, and its old size given back");
        k.keep("b", 3, 40);
        assert_eq!(k.take("a"), Some(2));
        assert_eq!(k.take("a"), None, "taken once");
        k.keep("c", 4, 70);
        assert_eq!(k.take("b"), None, "no room: what was kept is dropped");
        assert_eq!(k.take("c"), Some(4));
        k.keep("d", 5, 1);
        k.keep("e", 6, 1);
        k.keep("f", 7, 1);
        assert_eq!(
            (k.take("d"), k.take("e")),
            (None, None),
            "over the entry cap"
        );
        assert_eq!(k.take("f"), Some(7));
        k.keep("g", 8, 101);
        assert_eq!(
            k.take("g"),
            None,
            "larger than the whole budget: never kept"
        );
        assert_eq!(k.bytes, 0);
    }
}
