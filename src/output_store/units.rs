//! Positions in output counted the way the dashboard counts them: UTF-16 code units, the length
//! of a JavaScript string. The run-wide output cursor (`offset`, the SSE `id:`) is in these
//! units, so `offset + content.length` of a frame is exactly where the next frame starts, also
//! for multi-byte characters. Counting looks at single bytes (a character's lead byte counts 1,
//! or 2 when it starts a 4-byte character, which JavaScript holds as a surrogate pair;
//! continuation bytes count 0), so counts of consecutive pieces add up however the bytes are cut.

/// UTF-16 code units of one byte of UTF-8 text.
fn weight(b: u8) -> u64 {
    match b {
        0x80..=0xBF => 0,
        0xF0..=0xFF => 2,
        _ => 1,
    }
}

/// UTF-16 code units of `bytes` read as UTF-8 (its `encode_utf16().count()` when valid).
pub fn utf16_units(bytes: &[u8]) -> u64 {
    bytes.iter().map(|&b| weight(b)).sum()
}

/// Where unit `target` falls in `bytes`, counting from `units` units already passed: either
/// inside `bytes` — `Found(byte, unit)`, the start of the character holding the target (a
/// target in the middle of a surrogate pair lands on the pair's first unit, so nothing of the
/// character is lost) — or past them, `After(units)` with the total counted.
pub fn seek_unit(bytes: &[u8], mut units: u64, target: u64) -> Seek {
    for (i, &b) in bytes.iter().enumerate() {
        let w = weight(b);
        if w > 0 && units + w > target {
            return Seek::Found(i as u64, units);
        }
        units += w;
    }
    Seek::After(units)
}

/// The answer of [`seek_unit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seek {
    Found(u64, u64),
    After(u64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_javascript_string_lengths() {
        for s in ["", "ascii", "é", "日本", "🙂", "a é 日本 🙂 z\n"] {
            assert_eq!(
                utf16_units(s.as_bytes()),
                s.encode_utf16().count() as u64,
                "{s}"
            );
        }
        // Pieces cut anywhere, even inside a character, add up to the whole.
        let s = "x🙂é日".as_bytes();
        for cut in 0..=s.len() {
            assert_eq!(utf16_units(&s[..cut]) + utf16_units(&s[cut..]), 5);
        }
    }

    #[test]
    fn a_target_inside_a_character_lands_on_its_start() {
        let s = "a🙂b".as_bytes();
        assert_eq!(seek_unit(s, 0, 0), Seek::Found(0, 0));
        assert_eq!(seek_unit(s, 0, 1), Seek::Found(1, 1));
        // Unit 2 is the emoji's second half: the whole emoji is sent again.
        assert_eq!(seek_unit(s, 0, 2), Seek::Found(1, 1));
        assert_eq!(seek_unit(s, 0, 3), Seek::Found(5, 3));
        assert_eq!(seek_unit(s, 0, 4), Seek::After(4));
        assert_eq!(seek_unit(s, 10, 12), Seek::Found(1, 11));
    }
}
