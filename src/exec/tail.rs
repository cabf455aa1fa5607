//! A bounded buffer that keeps the end of a byte stream, so that a command printing hundreds of
//! megabytes costs a fixed amount of memory. Used by the agent runner and the verifier.

/// Keeps the last bytes of a stream (at least `max_bytes` of them once that many arrived).
#[derive(Debug, Clone)]
pub struct TailBuffer {
    buf: Vec<u8>,
    max_bytes: usize,
    truncated: bool,
    total: u64,
}

impl TailBuffer {
    /// A buffer keeping about `max_bytes` (never more than twice that).
    pub fn new(max_bytes: usize) -> Self {
        TailBuffer {
            buf: Vec::new(),
            max_bytes,
            truncated: false,
            total: 0,
        }
    }

    /// Appends a chunk, dropping the oldest bytes beyond the bound.
    pub fn push(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        self.buf.extend_from_slice(data);
        // Cutting only past twice the bound keeps pushes amortised O(chunk).
        if self.buf.len() > 2 * self.max_bytes {
            let cut = self.buf.len() - self.max_bytes;
            self.buf.drain(..cut);
            self.truncated = true;
        }
    }

    /// Every byte pushed so far.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// Whether older bytes were dropped (the kept text may start mid-line).
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The kept bytes as text (invalid UTF-8 replaced; a character cut at the front skipped).
    pub fn text(&self) -> String {
        let start = if self.truncated {
            // Skip UTF-8 continuation bytes left by the cut.
            self.buf
                .iter()
                .position(|b| b & 0xC0 != 0x80)
                .unwrap_or(self.buf.len())
        } else {
            0
        };
        String::from_utf8_lossy(&self.buf[start..]).into_owned()
    }

    /// The last `n` lines of the kept text, with their line endings.
    pub fn last_lines(&self, n: usize) -> String {
        last_lines(&self.text(), n).to_string()
    }

    /// Whether the last non-blank line is exactly `line` (after trimming) and is known to be a
    /// whole line (not the cut end of a longer one).
    pub fn last_line_is(&self, line: &str) -> bool {
        let text = self.text();
        let body = text.trim_end();
        let Some(before) = body.strip_suffix(line) else {
            return false;
        };
        let before = before.trim_end_matches(|c: char| c.is_whitespace() && c != '\n');
        match before.chars().last() {
            Some('\n') => true,
            None => !self.truncated,
            Some(_) => false,
        }
    }
}

/// The last `n` lines of `text` (a final line ending does not count as an extra line).
pub fn last_lines(text: &str, n: usize) -> &str {
    if n == 0 {
        return "";
    }
    let body = text.strip_suffix('\n').unwrap_or(text);
    match body.rmatch_indices('\n').nth(n - 1) {
        Some((pos, _)) => &text[pos + 1..],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_keeps_the_final_newline_and_counts_lines_not_newlines() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(last_lines("a\nb\nc", 2), "b\nc");
        assert_eq!(last_lines("a\nb\n", 5), "a\nb\n");
        assert_eq!(last_lines("a\nb\n", 0), "");
    }

    #[test]
    fn the_buffer_stays_bounded_and_counts_every_byte() {
        let mut tail = TailBuffer::new(100);
        for i in 0..1000 {
            tail.push(format!("line {i}\n").as_bytes());
        }
        assert!(tail.text().len() <= 200);
        assert!(tail.truncated());
        assert_eq!(tail.last_lines(2), "line 998\nline 999\n");
        let expected: u64 = (0..1000).map(|i| format!("line {i}\n").len() as u64).sum();
        assert_eq!(tail.total_bytes(), expected);
    }

    #[test]
    fn a_cut_inside_a_multibyte_character_is_skipped() {
        let mut tail = TailBuffer::new(4);
        tail.push("ééééééé".as_bytes()); // 14 bytes > 2 * 4
        assert!(tail.text().chars().all(|c| c == 'é'));
    }

    #[test]
    fn last_line_is_needs_a_whole_line() {
        let mut tail = TailBuffer::new(1024);
        tail.push(b"work\n  TOKEN  \n\n");
        assert!(tail.last_line_is("TOKEN"));
        let mut tail = TailBuffer::new(1024);
        tail.push(b"work TOKEN\n");
        assert!(!tail.last_line_is("TOKEN"));
        let mut tail = TailBuffer::new(1024);
        tail.push(b"TOKEN");
        assert!(tail.last_line_is("TOKEN"));
        let mut tail = TailBuffer::new(5);
        tail.push(b"xxxxxxxxTOKEN"); // keeps "TOKEN", but it is the end of a longer line
        assert!(!tail.last_line_is("TOKEN"));
    }
}
