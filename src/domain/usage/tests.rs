//! The `result` event of Claude Code's stream-json and json output, as the agent prints it.

use super::*;

/// A stream-json run's last line, as `claude -p --output-format stream-json --verbose` prints it.
const STREAM_RESULT: &str = r#"{"type":"result","subtype":"success","is_error":false,"duration_ms":48211,"duration_api_ms":51032,"num_turns":7,"result":"Done.\n<promise>COMPLETE</promise>","session_id":"0b8c5a7e-3f0e-4d55-9d3c-7e2b8f1a9c44","total_cost_usd":0.2417655,"usage":{"input_tokens":26,"cache_creation_input_tokens":12408,"cache_read_input_tokens":98231,"output_tokens":2210,"server_tool_use":{"web_search_requests":0},"service_tier":"standard"},"modelUsage":{"claude-sonnet-4-5-20250929":{"inputTokens":26,"outputTokens":2210,"costUSD":0.2417655}},"permission_denials":[],"uuid":"5c1b2f0d-8a43-4c3e-b0d1-2f5e6a7b8c9d"}"#;

/// `--output-format json`: one object, pretty-printed or not, of the same shape.
const JSON_RESULT: &str = r#"{
  "type": "result",
  "subtype": "success",
  "is_error": false,
  "duration_ms": 3120,
  "duration_api_ms": 2944,
  "num_turns": 1,
  "result": "hello",
  "session_id": "9f1e",
  "total_cost_usd": 0.00412,
  "usage": {"input_tokens": 4, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 14201, "output_tokens": 12}
}"#;

/// An API error the CLI ends with: a result that is an error, no cost.
const ERROR_RESULT: &str = r#"{"type":"result","subtype":"success","is_error":true,"duration_ms":912,"duration_api_ms":0,"num_turns":1,"result":"API Error: 429 {\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"Number of concurrent connections has exceeded your rate limit.\"}}","session_id":"e77","total_cost_usd":0,"usage":{"input_tokens":0,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":0}}"#;

fn parse(s: &str) -> Option<StepUsage> {
    parse_result_event(&serde_json::from_str(s).unwrap())
}

#[test]
fn a_stream_json_result_line_gives_every_figure() {
    let u = parse(STREAM_RESULT).unwrap();
    assert_eq!(u.total_cost_usd, 0.2417655);
    assert_eq!(
        (
            u.input_tokens,
            u.output_tokens,
            u.cache_creation_input_tokens,
            u.cache_read_input_tokens
        ),
        (26, 2210, 12408, 98231)
    );
    assert_eq!((u.num_turns, u.duration_api_ms), (7, 51032));
    assert!(!u.is_error);
    assert_eq!(u.subtype.as_deref(), Some("success"));
    assert_eq!(
        u.session_id.as_deref(),
        Some("0b8c5a7e-3f0e-4d55-9d3c-7e2b8f1a9c44")
    );
    assert_eq!(u.tokens(), 26 + 2210 + 12408 + 98231);
}

#[test]
fn the_json_output_format_has_the_same_shape() {
    let u = parse(JSON_RESULT).unwrap();
    assert_eq!(u.total_cost_usd, 0.00412);
    assert_eq!((u.input_tokens, u.cache_read_input_tokens), (4, 14201));
    assert_eq!(u.session_id.as_deref(), Some("9f1e"));
}

#[test]
fn an_error_result_is_marked_and_costs_nothing() {
    let u = parse(ERROR_RESULT).unwrap();
    assert!(u.is_error);
    assert_eq!(u.total_cost_usd, 0.0);
    assert_eq!(u.tokens(), 0);
}

#[test]
fn other_events_and_odd_numbers() {
    for other in [
        r#"{"type":"system","subtype":"init","model":"claude-sonnet-4-5"}"#,
        r#"{"type":"assistant","message":{"content":[]}}"#,
        r#"{"result":"no type"}"#,
    ] {
        assert_eq!(parse(other), None, "{other}");
    }
    // An older agent's `cost_usd`, missing usage, negative and fractional numbers.
    let u =
        parse(r#"{"type":"result","cost_usd":0.5,"num_turns":2.9,"duration_api_ms":-4}"#).unwrap();
    assert_eq!(u.total_cost_usd, 0.5);
    assert_eq!((u.num_turns, u.duration_api_ms, u.tokens()), (2, 0, 0));
    let u = parse(r#"{"type":"result","total_cost_usd":-1}"#).unwrap();
    assert_eq!(u.total_cost_usd, 0.0);
}

#[test]
fn a_run_sums_its_steps() {
    let (a, b) = (parse(STREAM_RESULT).unwrap(), parse(JSON_RESULT).unwrap());
    let run: RunUsage = [&a, &b].into_iter().collect();
    assert!((run.total_cost_usd - (0.2417655 + 0.00412)).abs() < 1e-12);
    assert_eq!(run.input_tokens, 30);
    assert_eq!(run.cache_read_input_tokens, 98231 + 14201);
    assert_eq!((run.num_turns, run.steps), (8, 2));
    assert_eq!(run.tokens(), a.tokens() + b.tokens());
}

#[test]
fn costs_read_as_dollars() {
    assert_eq!(cost_text(0.2417655), "$0.2418");
    assert_eq!(cost_text(12.345), "$12.35");
}

#[test]
fn retried_attempts_add_up_and_keep_the_last_ones_flags() {
    let (a, b) = (parse(ERROR_RESULT).unwrap(), parse(JSON_RESULT).unwrap());
    let both = a.then(b.clone());
    assert_eq!(both.total_cost_usd, b.total_cost_usd);
    assert_eq!((both.num_turns, both.is_error), (2, false));
    assert_eq!(both.session_id, b.session_id);
}

#[test]
fn a_budget_is_exceeded_only_past_it_and_says_by_how_much() {
    let run: RunUsage = [&parse(STREAM_RESULT).unwrap()].into_iter().collect();
    assert_eq!(budget_exceeded(&run, None, None), None);
    assert_eq!(budget_exceeded(&run, Some(0.25), Some(1_000_000)), None);
    assert_eq!(
        budget_exceeded(&run, Some(0.2), None).as_deref(),
        Some("budget_exceeded:cost ($0.2418 spent, max_cost_usd $0.2000)")
    );
    assert_eq!(
        budget_exceeded(&run, None, Some(100_000)).as_deref(),
        Some("budget_exceeded:tokens (112875 tokens spent, max_tokens 100000)")
    );
    // Exactly at the budget is within it.
    assert_eq!(budget_exceeded(&run, None, Some(run.tokens())), None);
}

#[test]
fn a_day_starts_at_midnight_utc() {
    // 2026-12-06T23:59:59.999Z and the next millisecond.
    let last = 1_796_601_599_999;
    assert_eq!(day_start(last), 1_796_515_200_000);
    assert_eq!(day_start(last + 1), last + 1);
    assert_eq!(day_start(last + 1) - day_start(last), DAY_MS);
}

#[test]
fn a_daily_budget_is_reached_at_its_figure_and_says_until_when() {
    let spent = |cost: f64, input: u64| RunUsage {
        total_cost_usd: cost,
        input_tokens: input,
        ..RunUsage::default()
    };
    let none = DailyBudget::default();
    assert!(!none.limits());
    assert_eq!(none.reached(&spent(1e9, u64::MAX / 2)), None);
    let cost = DailyBudget {
        cost_usd: Some(0.5),
        tokens: None,
    };
    assert_eq!(cost.reached(&spent(0.4999, 0)), None);
    assert_eq!(
        cost.reached(&spent(0.5, 0)).as_deref(),
        Some("daily budget reached: $0.5000 of $0.5000; resumes 00:00 UTC")
    );
    let tokens = DailyBudget {
        cost_usd: Some(10.0),
        tokens: Some(1000),
    };
    assert_eq!(tokens.reached(&spent(1.0, 999)), None);
    assert_eq!(
        tokens.reached(&spent(1.0, 1200)).as_deref(),
        Some("daily budget reached: 1200 of 1000 tokens; resumes 00:00 UTC")
    );
}
