//! Completion detection: whether an implementation output says the plan is done. Pure; the
//! agent runner and the run pipeline call it on successful implementation output.

use crate::domain::status::CompletionMode;

/// The token an agent prints when no task is left (case-sensitive).
pub const COMPLETION_TOKEN: &str = "<promise>COMPLETE</promise>";

/// `exact`: the whole trimmed output is the token. `trailing`: the last non-blank line,
/// trimmed, is the token.
pub fn is_complete(output: &str, mode: CompletionMode) -> bool {
    match mode {
        CompletionMode::Exact => output.trim() == COMPLETION_TOKEN,
        CompletionMode::Trailing => last_non_blank_line(output) == Some(COMPLETION_TOKEN),
    }
}

/// The last line whose trim is non-empty, trimmed.
pub fn last_non_blank_line(output: &str) -> Option<&str> {
    output.lines().map(str::trim).rfind(|l| !l.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use CompletionMode::{Exact, Trailing};

    #[test]
    fn trailing_mode_accepts_the_token_as_the_last_non_blank_line() {
        assert!(is_complete(
            "did the work\n  <promise>COMPLETE</promise>  \n\n  \n",
            Trailing
        ));
        assert!(is_complete(COMPLETION_TOKEN, Trailing));
        assert!(is_complete(
            "a\r\n<promise>COMPLETE</promise>\r\n",
            Trailing
        ));
    }

    #[test]
    fn trailing_mode_rejects_the_token_elsewhere_or_altered() {
        assert!(!is_complete(
            "<promise>COMPLETE</promise>\nmore text",
            Trailing
        ));
        assert!(!is_complete("done: <promise>COMPLETE</promise>", Trailing));
        assert!(!is_complete("<promise>complete</promise>", Trailing));
        assert!(!is_complete("", Trailing));
    }

    #[test]
    fn exact_mode_needs_the_whole_output_to_be_the_token() {
        assert!(is_complete("\n  <promise>COMPLETE</promise>\n", Exact));
        assert!(!is_complete("ok\n<promise>COMPLETE</promise>", Exact));
        assert!(!is_complete("", Exact));
    }
}
