//! Watchdog detection and its rewrites.

use super::*;

fn input(output: &str) -> WatchdogInput<'_> {
    WatchdogInput {
        verification_failed: false,
        output,
        previous_output: None,
        rewrite_count: 0,
    }
}

#[test]
fn similarity_counts_equal_lines_at_the_same_index_over_the_longer_text() {
    assert_eq!(similarity("", ""), 1.0);
    assert_eq!(similarity("a", ""), 0.0);
    assert_eq!(similarity("a\nb\nc\nd", "a\nb\nc\nd"), 1.0);
    assert_eq!(similarity("a\nb\nc\nd", "a\nx\nc\nd"), 0.75);
    assert_eq!(similarity("a\nb", "a\nb\nc\nd"), 0.5);
    assert_eq!(similarity("x\na\nb", "a\nb"), 0.0);
}

#[test]
fn a_clean_iteration_continues() {
    assert_eq!(
        evaluate(&input("implemented the parser")),
        Decision::Continue
    );
}

#[test]
fn a_failed_verification_alone_continues_since_runner_notes_cover_it() {
    let i = WatchdogInput {
        verification_failed: true,
        ..input("I'm stuck")
    };
    assert_eq!(primary_signal(&i), Some(Signal::VerificationFailed));
    assert_eq!(evaluate(&i), Decision::Continue);
}

#[test]
fn stuck_phrases_raise_no_progress_case_insensitively() {
    for phrase in STUCK_PHRASES {
        let text = format!("Well... {}", phrase.to_uppercase());
        assert_eq!(primary_signal(&input(&text)), Some(Signal::NoProgress));
    }
    match evaluate(&input("I cannot proceed without the API key")) {
        Decision::Rewrite {
            signal: Signal::NoProgress,
            instruction,
        } => assert!(instruction.contains("make a concrete change")),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn an_output_nearly_identical_to_the_previous_one_is_a_repeated_task() {
    let prev = (0..20)
        .map(|i| format!("line {i}"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut lines: Vec<String> = prev.lines().map(String::from).collect();
    lines[0] = "changed".into();
    let now = lines.join("\n"); // 19/20 = 0.95
    let i = WatchdogInput {
        previous_output: Some(&prev),
        ..input(&now)
    };
    match evaluate(&i) {
        Decision::Rewrite {
            signal: Signal::RepeatedTask,
            instruction,
        } => assert!(instruction.contains("repeated the previous one")),
        other => panic!("unexpected {other:?}"),
    }
    lines[1] = "changed".into();
    lines[2] = "changed".into();
    let now = lines.join("\n"); // 17/20 = 0.85, not above the threshold
    let i = WatchdogInput {
        previous_output: Some(&prev),
        ..input(&now)
    };
    assert_eq!(evaluate(&i), Decision::Continue);
}

#[test]
fn malformed_completion_tokens_are_detected_but_the_real_token_is_not() {
    for bad in MALFORMED_TOKENS {
        assert_eq!(
            primary_signal(&input(&format!("all done\n{bad}"))),
            Some(Signal::MalformedComplete),
            "{bad}"
        );
    }
    assert_eq!(
        primary_signal(&input("done\n<promise>COMPLETE</promise>")),
        None
    );
    assert_eq!(primary_signal(&input("<promise>DONE</promise>")), None);
}

#[test]
fn signals_follow_the_documented_priority() {
    let both = "I'm stuck\n<promise>complete</promise>";
    assert_eq!(primary_signal(&input(both)), Some(Signal::NoProgress));
    let i = WatchdogInput {
        previous_output: Some("<promise>complete</promise>"),
        ..input("<promise>complete</promise>")
    };
    assert_eq!(primary_signal(&i), Some(Signal::RepeatedTask));
}

#[test]
fn any_signal_after_the_maximum_rewrites_fails_the_run() {
    let i = WatchdogInput {
        rewrite_count: MAX_REWRITES,
        ..input("i'm unable to continue")
    };
    assert_eq!(
        evaluate(&i),
        Decision::Fail {
            signal: Signal::NoProgress
        }
    );
    let i = WatchdogInput {
        verification_failed: true,
        rewrite_count: MAX_REWRITES,
        ..input("fine")
    };
    assert_eq!(
        evaluate(&i),
        Decision::Fail {
            signal: Signal::VerificationFailed
        }
    );
    let i = WatchdogInput {
        rewrite_count: MAX_REWRITES,
        ..input("fine")
    };
    assert_eq!(evaluate(&i), Decision::Continue);
}

#[test]
fn signal_names_are_snake_case_in_json_and_camel_case_in_reasons() {
    assert_eq!(
        serde_json::to_string(&Signal::MalformedComplete).unwrap(),
        "\"malformed_complete\""
    );
    assert_eq!(Signal::NoProgress.reason_name(), "NoProgress");
    assert_eq!(
        Signal::VerificationFailed.reason_name(),
        "VerificationFailed"
    );
    assert_eq!(Signal::RepeatedTask.reason_name(), "RepeatedTask");
}

#[test]
fn the_rewrite_prompt_puts_the_intervention_before_the_last_prompt() {
    assert_eq!(
        rewrite_prompt("Do X.", "@spec.md\n\nbody"),
        "# IMPORTANT: Read this section carefully before continuing\n\n---\n\n## Watchdog Intervention\n\nDo X.\n\n---\n\n@spec.md\n\nbody"
    );
}
