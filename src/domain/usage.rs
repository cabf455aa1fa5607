//! What an agent step spent, as the agent's final `result` event reports it (Claude Code's
//! stream-json and json output formats), and the sum of a run's steps. Pure: the worker parses
//! the event, the controller stores it with the step and adds the steps up for the run.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The usage one agent step reported in its `result` event. Field names are the agent's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepUsage {
    #[serde(default)]
    pub total_cost_usd: f64,
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub cache_creation_input_tokens: u64,
    #[serde(default)]
    pub cache_read_input_tokens: u64,
    #[serde(default)]
    pub num_turns: u64,
    #[serde(default)]
    pub duration_api_ms: u64,
    #[serde(default)]
    pub is_error: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

impl StepUsage {
    /// This attempt's usage followed by a `later` attempt's of the same step: the figures
    /// added, the flags and ids of the later one.
    pub fn then(self, later: StepUsage) -> StepUsage {
        StepUsage {
            total_cost_usd: self.total_cost_usd + later.total_cost_usd,
            input_tokens: self.input_tokens + later.input_tokens,
            output_tokens: self.output_tokens + later.output_tokens,
            cache_creation_input_tokens: self.cache_creation_input_tokens
                + later.cache_creation_input_tokens,
            cache_read_input_tokens: self.cache_read_input_tokens + later.cache_read_input_tokens,
            num_turns: self.num_turns + later.num_turns,
            duration_api_ms: self.duration_api_ms + later.duration_api_ms,
            ..later
        }
    }

    /// Every token the step used, of the four kinds.
    pub fn tokens(&self) -> u64 {
        self.input_tokens
            + self.output_tokens
            + self.cache_creation_input_tokens
            + self.cache_read_input_tokens
    }
}

/// A number of the event: an unsigned integer, or a float rounded down (never negative).
fn count(v: Option<&Value>) -> u64 {
    match v {
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .map(|f| f as u64)
            })
            .unwrap_or(0),
        _ => 0,
    }
}

/// The usage of a `{"type":"result", …}` event; `None` for any other event. Missing numbers
/// count as zero (older agents omit some); a negative or non-finite cost as zero.
pub fn parse_result_event(event: &Value) -> Option<StepUsage> {
    if event.get("type")?.as_str()? != "result" {
        return None;
    }
    let usage = event.get("usage");
    let tokens = |key: &str| count(usage.and_then(|u| u.get(key)));
    let cost = event
        .get("total_cost_usd")
        .or_else(|| event.get("cost_usd"))
        .and_then(Value::as_f64)
        .filter(|c| c.is_finite() && *c >= 0.0)
        .unwrap_or(0.0);
    let text = |key: &str| event.get(key).and_then(Value::as_str).map(str::to_string);
    Some(StepUsage {
        total_cost_usd: cost,
        input_tokens: tokens("input_tokens"),
        output_tokens: tokens("output_tokens"),
        cache_creation_input_tokens: tokens("cache_creation_input_tokens"),
        cache_read_input_tokens: tokens("cache_read_input_tokens"),
        num_turns: count(event.get("num_turns")),
        duration_api_ms: count(event.get("duration_api_ms")),
        is_error: event
            .get("is_error")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        subtype: text("subtype"),
        session_id: text("session_id"),
    })
}

/// The sum of a run's step usages (the run's `usage` object).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunUsage {
    pub total_cost_usd: f64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub num_turns: u64,
    pub duration_api_ms: u64,
    /// Steps that reported usage.
    pub steps: u64,
}

impl RunUsage {
    pub fn add(&mut self, s: &StepUsage) {
        self.total_cost_usd += s.total_cost_usd;
        self.input_tokens += s.input_tokens;
        self.output_tokens += s.output_tokens;
        self.cache_creation_input_tokens += s.cache_creation_input_tokens;
        self.cache_read_input_tokens += s.cache_read_input_tokens;
        self.num_turns += s.num_turns;
        self.duration_api_ms += s.duration_api_ms;
        self.steps += 1;
    }

    /// Every token of the four kinds.
    pub fn tokens(&self) -> u64 {
        self.input_tokens
            + self.output_tokens
            + self.cache_creation_input_tokens
            + self.cache_read_input_tokens
    }
}

impl<'a> FromIterator<&'a StepUsage> for RunUsage {
    fn from_iter<I: IntoIterator<Item = &'a StepUsage>>(iter: I) -> Self {
        let mut total = RunUsage::default();
        for s in iter {
            total.add(s);
        }
        total
    }
}

/// Why a run that has spent `spent` is over its budget (`max_cost_usd`, `max_tokens`), if it
/// is: `budget_exceeded:cost` or `budget_exceeded:tokens`, then what was spent of what.
pub fn budget_exceeded(
    spent: &RunUsage,
    max_cost_usd: Option<f64>,
    max_tokens: Option<u64>,
) -> Option<String> {
    if let Some(max) = max_cost_usd.filter(|m| spent.total_cost_usd > *m) {
        return Some(format!(
            "budget_exceeded:cost ({} spent, max_cost_usd {})",
            cost_text(spent.total_cost_usd),
            cost_text(max)
        ));
    }
    let tokens = spent.tokens();
    max_tokens
        .filter(|m| tokens > *m)
        .map(|max| format!("budget_exceeded:tokens ({tokens} tokens spent, max_tokens {max})"))
}

/// A day in ms: daily budgets count from 00:00 UTC.
pub const DAY_MS: i64 = 86_400_000;

/// 00:00 UTC of the day `now_ms` falls in.
pub fn day_start(now_ms: i64) -> i64 {
    now_ms.div_euclid(DAY_MS) * DAY_MS
}

/// The daily budget of a workspace (`[budgets]`): what the agent steps of its runs may spend
/// in one UTC day. `None`: no limit of that kind.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DailyBudget {
    pub cost_usd: Option<f64>,
    pub tokens: Option<u64>,
}

impl DailyBudget {
    /// Whether it limits anything.
    pub fn limits(&self) -> bool {
        self.cost_usd.is_some() || self.tokens.is_some()
    }

    /// Why the workspace's new steps wait, when what it `spent` today reached the budget:
    /// `daily budget reached: $0.5000 of $0.4000; resumes 00:00 UTC` (or tokens).
    pub fn reached(&self, spent: &RunUsage) -> Option<String> {
        let what = if let Some(max) = self.cost_usd.filter(|m| spent.total_cost_usd >= *m) {
            format!("{} of {}", cost_text(spent.total_cost_usd), cost_text(max))
        } else {
            let tokens = spent.tokens();
            let max = self.tokens.filter(|m| tokens >= *m)?;
            format!("{tokens} of {max} tokens")
        };
        Some(format!("{DAILY_BUDGET_PREFIX}{what}; resumes 00:00 UTC"))
    }
}

/// How a waiting reason of the daily budget begins.
pub const DAILY_BUDGET_PREFIX: &str = "daily budget reached: ";

/// A cost as people read it: `$0.0123` below a dollar, `$12.35` above.
pub fn cost_text(usd: f64) -> String {
    if usd < 1.0 {
        format!("${usd:.4}")
    } else {
        format!("${usd:.2}")
    }
}

#[cfg(test)]
mod tests;
