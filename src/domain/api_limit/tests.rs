//! The error texts the Claude CLI prints when the API pushes back.

use super::*;

#[test]
fn rate_limits_and_overloads_are_told_apart() {
    let rate = r#"API Error: 429 {"type":"error","error":{"type":"rate_limit_error","message":"Number of concurrent connections has exceeded your rate limit."}}"#;
    assert_eq!(classify(rate), ApiFailure::RateLimited);
    let over = r#"API Error: 529 {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    assert_eq!(classify(over), ApiFailure::Overloaded);
    assert_eq!(
        classify("Error: 429 Too Many Requests"),
        ApiFailure::RateLimited
    );
    assert!(classify(rate).is_pressure() && classify(over).is_pressure());
}

#[test]
fn a_usage_limit_gives_its_reset_time() {
    let text = "Claude AI usage limit reached|1765058400";
    assert_eq!(
        classify(text),
        ApiFailure::UsageLimit {
            resets_at_ms: Some(1_765_058_400_000)
        }
    );
    let now = 1_765_058_400_000 - 90_000;
    assert_eq!(classify(text).pause_ms(now), Some(90_000));
    let vague = "5-hour limit reached ∙ resets 3pm";
    assert_eq!(
        classify(vague),
        ApiFailure::UsageLimit { resets_at_ms: None }
    );
    assert_eq!(classify(vague).pause_ms(0), Some(USAGE_LIMIT_PAUSE_MS));
    // A reset time in the past or far away is bounded.
    assert_eq!(classify(text).pause_ms(i64::MAX / 2), Some(1_000));
    assert_eq!(classify(text).pause_ms(0), Some(MAX_PAUSE_MS));
}

#[test]
fn authentication_and_other_failures_are_not_pressure() {
    let auth = r#"API Error: 401 {"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#;
    assert_eq!(classify(auth), ApiFailure::Authentication);
    assert_eq!(
        classify("Invalid API key · Please run /login"),
        ApiFailure::Authentication
    );
    assert_eq!(classify("the agent failed"), ApiFailure::Other);
    assert_eq!(classify("API Error: 500 internal"), ApiFailure::Other);
    for f in [ApiFailure::Authentication, ApiFailure::Other] {
        assert!(!f.is_pressure());
        assert_eq!(f.pause_ms(0), None);
    }
    assert_eq!(
        ApiFailure::RateLimited.pause_ms(0),
        Some(RATE_LIMIT_PAUSE_MS)
    );
}

#[test]
fn a_hand_back_reason_names_its_push_back() {
    for f in [
        ApiFailure::RateLimited,
        ApiFailure::Overloaded,
        ApiFailure::UsageLimit { resets_at_ms: None },
    ] {
        let reason = format!("agent API {}: retry in 10 s", f.as_str());
        assert_eq!(ApiFailure::from_reason(&reason), Some(f));
    }
    assert_eq!(ApiFailure::from_reason("worker draining"), None);
    assert_eq!(ApiFailure::from_reason("agent API authentication: x"), None);
}
