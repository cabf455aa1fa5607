//! Why an agent step failed, as far as the agent API is concerned, read from what the agent
//! printed (its error text, its `is_error` result): rate-limited (429), overloaded (529), the
//! account's usage limit reached (with its reset time when the message gives one), refused
//! authentication, or something else. The first three are the API's pressure, not the step's
//! fault: the step goes back to the queue, after a pause, without using an attempt. Pure.

/// The API's verdict on a failed agent step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiFailure {
    RateLimited,
    Overloaded,
    /// The account's usage limit; `resets_at_ms` when the message says when it resets.
    UsageLimit {
        resets_at_ms: Option<i64>,
    },
    Authentication,
    Other,
}

/// Pause before a rate-limited step is offered again.
pub const RATE_LIMIT_PAUSE_MS: i64 = 10_000;
/// Pause before an overloaded step is offered again.
pub const OVERLOAD_PAUSE_MS: i64 = 15_000;
/// Pause after a usage limit whose message gives no reset time.
pub const USAGE_LIMIT_PAUSE_MS: i64 = 5 * 60_000;
/// Longest pause a reset time may impose (a wrong clock must not hold a step for days).
pub const MAX_PAUSE_MS: i64 = 24 * 3_600_000;

impl ApiFailure {
    /// A pressure signal: the step goes back to the queue without using an attempt.
    pub fn is_pressure(&self) -> bool {
        matches!(
            self,
            ApiFailure::RateLimited | ApiFailure::Overloaded | ApiFailure::UsageLimit { .. }
        )
    }

    /// How long the step waits before it is offered again, at `now_ms`; `None` when it is
    /// not a pressure signal.
    pub fn pause_ms(&self, now_ms: i64) -> Option<i64> {
        match self {
            ApiFailure::RateLimited => Some(RATE_LIMIT_PAUSE_MS),
            ApiFailure::Overloaded => Some(OVERLOAD_PAUSE_MS),
            ApiFailure::UsageLimit {
                resets_at_ms: Some(at),
            } => Some((at - now_ms).clamp(1_000, MAX_PAUSE_MS)),
            ApiFailure::UsageLimit { resets_at_ms: None } => Some(USAGE_LIMIT_PAUSE_MS),
            _ => None,
        }
    }

    /// The push-back a hand-back's reason names: the worker writes `agent API <kind>: …`
    /// (a usage limit's reset time is in the hand-back's pause, not here).
    pub fn from_reason(reason: &str) -> Option<ApiFailure> {
        let kind = reason.strip_prefix("agent API ")?.split(':').next()?;
        match kind {
            "rate_limited" => Some(ApiFailure::RateLimited),
            "overloaded" => Some(ApiFailure::Overloaded),
            "usage_limit" => Some(ApiFailure::UsageLimit { resets_at_ms: None }),
            _ => None,
        }
    }

    /// The kind's name in events and reasons.
    pub fn as_str(&self) -> &'static str {
        match self {
            ApiFailure::RateLimited => "rate_limited",
            ApiFailure::Overloaded => "overloaded",
            ApiFailure::UsageLimit { .. } => "usage_limit",
            ApiFailure::Authentication => "authentication",
            ApiFailure::Other => "other",
        }
    }
}

/// Classifies a failed agent step from the text it printed (stdout text, stderr, the
/// `result` event's text), in that order of precedence: usage limit, authentication,
/// overloaded, rate-limited, other.
pub fn classify(text: &str) -> ApiFailure {
    let lower = text.to_ascii_lowercase();
    if lower.contains("usage limit reached") || lower.contains("limit reached ∙ resets") {
        return ApiFailure::UsageLimit {
            resets_at_ms: reset_time(text),
        };
    }
    let has = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
    if has(&[
        "authentication_error",
        "invalid api key",
        "api error: 401",
        "oauth token has expired",
        "please run /login",
    ]) {
        return ApiFailure::Authentication;
    }
    if has(&[
        "overloaded_error",
        "api error: 529",
        "529 overloaded",
        "\"overloaded\"",
    ]) {
        return ApiFailure::Overloaded;
    }
    if has(&[
        "rate_limit_error",
        "api error: 429",
        "429 too many requests",
        "rate limit exceeded",
    ]) {
        return ApiFailure::RateLimited;
    }
    ApiFailure::Other
}

/// The reset time of a usage-limit message: Claude Code prints `Claude AI usage limit
/// reached|<unix seconds>`; also `resets_at <unix seconds>` / `"resetsAt": <seconds>`.
fn reset_time(text: &str) -> Option<i64> {
    let lower = text.to_ascii_lowercase();
    for marker in ["usage limit reached|", "resets_at", "resetsat"] {
        let Some(pos) = lower.find(marker) else {
            continue;
        };
        let rest = &text[pos + marker.len()..];
        let digits: String = rest
            .trim_start_matches(|c: char| !c.is_ascii_digit() && c != '\n')
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        // Seconds since the epoch: ten digits until 2286.
        if let Ok(secs) = digits.parse::<i64>() {
            if (1_000_000_000..100_000_000_000).contains(&secs) {
                return Some(secs * 1000);
            }
        }
    }
    None
}

pub mod account;

#[cfg(test)]
mod tests;
