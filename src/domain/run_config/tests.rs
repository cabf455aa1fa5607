//! Parsing and validation of `.loop/config`.

use super::*;
use serde_json::json;

fn applied(text: &str) -> RunConfig {
    let mut config = RunConfig::default();
    config.apply_kv_text(text).unwrap();
    config
}

fn value_error(key: &str, value: &str) -> String {
    let mut config = RunConfig::default();
    config.apply(key, value).unwrap_err().to_string()
}

#[test]
fn defaults_match_the_documented_values() {
    let c = RunConfig::default();
    assert_eq!(c.specs_dir, "specs");
    assert_eq!(c.plans_dir, "specs/planning");
    assert_eq!(c.model, "opus");
    assert_eq!(c.iterations, 50);
    assert_eq!(c.completion_mode, CompletionMode::Trailing);
    assert!(c.reviewer && c.worktree_cleanup && c.summary_json);
    assert_eq!(c.claude_timeout_sec, 600);
    assert_eq!(c.claude_retries, 0);
    assert_eq!(c.claude_retry_backoff_sec, 5);
    assert_eq!(c.verify_timeout_sec, 0);
    assert_eq!(c.run_branch_prefix, "run/");
    assert_eq!(c.merge_strategy, MergeStrategy::Squash);
    assert_eq!(
        c.worktree_path_template,
        "../{{ repo }}.{{ run_branch | sanitize }}"
    );
    assert_eq!(c.max_consecutive_verification_failures, 3);
    assert_eq!(c.max_consecutive_review_failures, 3);
    assert_eq!(c.agent_output, AgentOutput::Auto);
    assert_eq!(c.agent_cmd, DEFAULT_AGENT_CMD);
}

#[test]
fn kv_text_skips_comments_and_blank_lines_and_trims() {
    let pairs =
        parse_kv("# comment\n\n   model =  sonnet  \n  # indented comment\nx=y=z\n").unwrap();
    assert_eq!(
        pairs,
        vec![
            ("model".to_string(), "sonnet".to_string()),
            ("x".to_string(), "y=z".to_string())
        ]
    );
}

#[test]
fn one_pair_of_matching_quotes_is_removed_from_values() {
    let pairs = parse_kv("a=\"q\"\nb='s'\nc=\"'both'\"\nd=\"mismatch'\ne=\"\n").unwrap();
    let values: Vec<&str> = pairs.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(values, vec!["q", "s", "'both'", "\"mismatch'", "\""]);
}

#[test]
fn a_line_without_equals_is_an_error_naming_its_line_number() {
    let err = parse_kv("model=opus\n\njust words\n").unwrap_err();
    assert_eq!(
        err,
        ConfigError::InvalidLine {
            line: 3,
            text: "just words".into()
        }
    );
    assert!(err.to_string().contains("line 3"));
    assert!(parse_kv("=value").is_err());
}

#[test]
fn bools_accept_every_documented_spelling_case_insensitively() {
    for yes in ["true", "1", "yes", "y", "on", "TRUE", "Yes", "ON"] {
        assert!(applied(&format!("summary_json=false\nsummary_json={yes}")).summary_json);
    }
    for no in ["false", "0", "no", "n", "off", "FALSE", "No", "Off"] {
        assert!(!applied(&format!("reviewer={no}")).reviewer);
    }
    assert!(value_error("reviewer", "maybe").contains("invalid value for reviewer: 'maybe'"));
}

#[test]
fn bad_integers_are_rejected_with_a_clear_message() {
    assert_eq!(
        value_error("iterations", "abc"),
        "invalid value for iterations: 'abc' (expected a non-negative integer)"
    );
    for bad in ["-1", "+3", "1.5", "", "99999999999999999999999"] {
        assert!(value_error("iterations", bad).contains("non-negative integer"));
    }
    let c = applied("iterations=7\nclaude_timeout_sec=0\nverify_timeout_sec=30\nclaude_retries=2");
    assert_eq!(
        (
            c.iterations,
            c.claude_timeout_sec,
            c.verify_timeout_sec,
            c.claude_retries
        ),
        (7, 0, 30, 2)
    );
}

#[test]
fn enums_parse_through_the_domain_spellings() {
    let c = applied(
        "completion_mode=exact\nmerge_strategy=none\nagent_output=stream-json\nrun_naming_mode=spec_slug",
    );
    assert_eq!(c.completion_mode, CompletionMode::Exact);
    assert_eq!(c.merge_strategy, MergeStrategy::None);
    assert_eq!(c.agent_output, AgentOutput::StreamJson);
    assert_eq!(c.run_naming_mode, NameSource::SpecSlug);
    assert_eq!(applied("agent_output=TEXT").agent_output, AgentOutput::Text);
    assert_eq!(
        value_error("completion_mode", "loose"),
        "invalid value for completion_mode: 'loose' (expected one of exact, trailing)"
    );
}

#[test]
fn verify_cmds_split_on_pipes_and_drop_empties() {
    let c = applied("verify_cmds= cargo test | | make lint |");
    assert_eq!(c.verify_cmds, vec!["cargo test", "make lint"]);
}

#[test]
fn context_files_split_on_whitespace() {
    let c = applied("context_files=docs/a.md   docs/b.md\tc.md");
    assert_eq!(c.context_files, vec!["docs/a.md", "docs/b.md", "c.md"]);
}

#[test]
fn empty_optional_strings_mean_none() {
    let c = applied("review_model=\nbase_branch=  \nmerge_target_branch=main\nprompt_file=''");
    assert_eq!(c.review_model, None);
    assert_eq!(c.base_branch, None);
    assert_eq!(c.merge_target_branch.as_deref(), Some("main"));
    assert_eq!(c.prompt_file, None);
    assert_eq!(c.effective_review_model(), "opus");
}

#[test]
fn out_of_scope_keys_are_ignored_silently_and_unknown_keys_warn() {
    let mut c = RunConfig::default();
    let warnings = c
        .apply_kv_text(
            "skills_enabled=banana\nworktrunk_bin=wt\nmode=x\npostmortem=false\n\
             queue_policy=lifo\nfrobnicate=1\n",
        )
        .unwrap();
    assert_eq!(warnings, vec!["unknown config key 'frobnicate' ignored"]);
    assert_eq!(c, RunConfig::default());
}

#[test]
fn the_log_directory_keys_are_read_and_checked() {
    let mut c = RunConfig::default();
    c.apply_kv_text("log_dir=out/logs\nglobal_log_dir=/g\nartifact_mode=global\n")
        .unwrap();
    assert_eq!(
        c.run_log_dir("/ws", "r1"),
        std::path::Path::new("/ws/out/logs/run-r1")
    );
    assert_eq!(c.global_log_dir.as_deref(), Some("/g"));
    assert_eq!(c.artifact_mode, crate::domain::ArtifactMode::Global);
    c.apply_kv_text("log_dir=\n").unwrap();
    assert_eq!(c.log_dir, "logs/loop", "empty: the default");
    let err = c.apply("artifact_mode", "both").unwrap_err().to_string();
    assert!(err.contains("artifact_mode"), "{err}");
    assert!(super::names_command("log_dir") && super::names_command("global_log_dir"));
}

#[test]
fn json_values_go_through_the_same_validation() {
    let mut c = RunConfig::default();
    let obj = json!({
        "iterations": 9, "reviewer": false, "model": "sonnet", "review_model": null,
        "verify_cmds": ["a || b", " ", "c"], "context_files": "x y",
        "skills_dirs": ["ignored"], "nope": true
    });
    let warnings = c.apply_json(obj.as_object().unwrap()).unwrap();
    assert_eq!(warnings, vec!["unknown config key 'nope' ignored"]);
    assert_eq!(c.iterations, 9);
    assert!(!c.reviewer);
    assert_eq!(c.verify_cmds, vec!["a || b", "c"]);
    assert_eq!(c.context_files, vec!["x", "y"]);

    let bad = json!({"iterations": -1});
    let err = c.apply_json(bad.as_object().unwrap()).unwrap_err();
    assert!(err.to_string().contains("non-negative integer"));
    let bad = json!({"model": ["a"]});
    assert!(c.apply_json(bad.as_object().unwrap()).is_err());
    let bad = json!({"verify_cmds": [1]});
    assert!(c.apply_json(bad.as_object().unwrap()).is_err());
}

#[test]
fn serialized_config_round_trips_through_serde_and_apply_json() {
    let mut c =
        applied("iterations=3\nverify_cmds=a|b\nmerge_target_branch=main\nagent_output=text");
    c.review_model = Some("haiku".into());
    let value = serde_json::to_value(&c).unwrap();
    assert_eq!(value["agent_output"], "text");
    assert_eq!(value["completion_mode"], "trailing");
    let back: RunConfig = serde_json::from_value(value.clone()).unwrap();
    assert_eq!(back, c);
    let mut reapplied = RunConfig::default();
    assert!(reapplied
        .apply_json(value.as_object().unwrap())
        .unwrap()
        .is_empty());
    assert_eq!(reapplied, c);
    let partial: RunConfig = serde_json::from_str(r#"{"model":"m"}"#).unwrap();
    assert_eq!(partial.iterations, 50);
}

#[test]
fn agent_argv_splits_like_a_shell_and_substitutes_the_model() {
    let c = applied("model=sonnet-4");
    assert_eq!(
        c.agent_argv().unwrap(),
        vec![
            "claude",
            "-p",
            "--verbose",
            "--dangerously-skip-permissions",
            "--output-format",
            "stream-json",
            "--model",
            "sonnet-4"
        ]
    );
    let c = applied(r#"agent_cmd=my-agent --flag "two words" 'single {model}' --m={model}"#);
    assert_eq!(
        c.agent_argv_with_model("m1").unwrap(),
        vec!["my-agent", "--flag", "two words", "single m1", "--m=m1"]
    );
}

#[test]
fn unbalanced_or_empty_agent_commands_are_rejected() {
    assert!(value_error("agent_cmd", "claude \"oops").contains("balanced quotes"));
    assert!(value_error("agent_cmd", "   ").contains("non-empty command line"));
}

#[test]
fn numbers_past_their_bound_are_refused_not_clamped() {
    for (key, max) in [
        ("iterations", 10_000u64),
        ("claude_timeout_sec", 604_800),
        ("verify_timeout_sec", 604_800),
        ("claude_retries", 100),
        ("claude_retry_backoff_sec", 3600),
        ("max_consecutive_verification_failures", 10_000),
        ("max_consecutive_review_failures", 10_000),
    ] {
        let mut c = RunConfig::default();
        assert_eq!(c.apply(key, &max.to_string()), Ok(None), "{key} = {max}");
        let e = value_error(key, &(max + 1).to_string());
        assert!(e.contains(&format!("at most {max}")), "{key}: {e}");
        let e = value_error(key, "18446744073709551615");
        assert!(e.contains("at most"), "{key}: {e}");
    }
    let bad = json!({"claude_timeout_sec": 1u64 << 40});
    assert!(RunConfig::default()
        .apply_json(bad.as_object().unwrap())
        .is_err());
}

#[test]
fn model_names_are_plain_words_that_cannot_break_out_of_a_command_line() {
    let c = applied("model=us.anthropic.claude-3-5:0\nreview_model=openrouter/x@y_z");
    assert_eq!(c.model, "us.anthropic.claude-3-5:0");
    assert_eq!(c.review_model.as_deref(), Some("openrouter/x@y_z"));
    for bad in ["opus; rm -rf /", "a b", "$(id)", "'x'", "`id`", ""] {
        assert!(
            value_error("model", bad).contains("letters, digits"),
            "{bad:?}"
        );
    }
    assert!(value_error("review_model", "x\"y").contains("letters, digits"));
    assert!(value_error("model", &"m".repeat(129)).contains("1-128"));
}

#[test]
fn the_command_keys_are_the_ones_that_name_commands_or_paths() {
    for k in COMMAND_KEYS {
        assert!(names_command(k));
        // Each is a key loopd acts on, not an ignored one.
        assert_eq!(RunConfig::default().apply(k, "x"), Ok(None), "{k}");
    }
    for k in [
        "model",
        "iterations",
        "reviewer",
        "base_branch",
        "merge_strategy",
    ] {
        assert!(!names_command(k), "{k}");
    }
}

#[test]
fn worktree_keep_days_takes_fractions_and_zero_keeps_for_ever() {
    let mut c = RunConfig::default();
    assert_eq!(c.worktree_keep_ms(), Some(7 * 86_400_000));
    c.apply("worktree_keep_days", "0.5").unwrap();
    assert_eq!(c.worktree_keep_ms(), Some(43_200_000));
    c.apply("worktree_keep_days", "0").unwrap();
    assert_eq!(c.worktree_keep_ms(), None);
    for bad in ["-1", "NaN", "inf", "week", "4000"] {
        assert!(c.apply("worktree_keep_days", bad).is_err(), "{bad}");
    }
}

#[test]
fn budgets_are_numbers_and_empty_means_none() {
    let mut c = RunConfig::default();
    assert_eq!((c.max_cost_usd, c.max_tokens), (None, None));
    c.apply("max_cost_usd", "2.5").unwrap();
    c.apply("max_tokens", "1000000").unwrap();
    assert_eq!((c.max_cost_usd, c.max_tokens), (Some(2.5), Some(1_000_000)));
    for bad in ["-1", "lots", "NaN", "inf"] {
        assert!(c.apply("max_cost_usd", bad).is_err(), "{bad}");
    }
    assert!(c.apply("max_tokens", "-5").is_err());
    assert_eq!(c.max_cost_usd, Some(2.5), "a refused value changes nothing");
    c.apply("max_cost_usd", "").unwrap();
    assert_eq!(c.max_cost_usd, None);
}
