//! Which characters may appear in names that people read in terminals and logs (run names,
//! artifact names, instance ids), and how to show a stored name safely. Pure.

/// Characters that make text lie about itself on a screen: control characters (a newline
/// forges a log line, an escape sequence drives a terminal), the bidirectional overrides and
/// isolates (they reorder what is shown), and U+FFFD (what a lossy decoding left behind).
pub fn is_deceptive(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FFFD}'
        )
}

/// Whether `s` is free of [`is_deceptive`] characters.
pub fn is_plain(s: &str) -> bool {
    !s.chars().any(is_deceptive)
}

/// `s` with every [`is_deceptive`] character shown as its escape (`\n`, `\u{1b}`), for
/// printing text that may predate the checks or come from elsewhere.
pub fn escaped(s: &str) -> String {
    if is_plain(s) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if is_deceptive(c) {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_bidi_and_replacement_characters_are_deceptive_and_shown_escaped() {
        for bad in [
            "a\nb",
            "\u{1b}[31mred",
            "x\u{202E}gpj.exe",
            "\u{2067}",
            "\u{FFFD}",
            "\0",
        ] {
            assert!(!is_plain(bad), "{bad:?}");
            assert!(is_plain(&escaped(bad)), "{bad:?} → {:?}", escaped(bad));
        }
        assert_eq!(escaped("a\nb\u{1b}"), "a\\nb\\u{1b}");
        for good in ["fix-login", "täsk ✓ 漢字", "a b.c/d"] {
            assert!(is_plain(good));
            assert_eq!(escaped(good), good);
        }
    }
}
