//! The agent account a step counts against, and the account's adaptive concurrency limit:
//! additive increase (one more slot after `recover_after` completions in a row), multiplicative
//! decrease (halved on a rate-limit or overload signal, once per wave), never below one nor
//! above `max_concurrent`; a usage limit pauses the account until its reset time. The limit at
//! which the API last refused for rate (the `ceiling`) is remembered: growing back to it again
//! takes `recover_after` completions per slot, so a steady pool probes a level known to be too
//! high rarely instead of every few completions. Pure: the database (`db::accounts`) keeps the
//! state, claims enforce it.

use super::ApiFailure;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// Whether steps are given an account at all (`[api_limits] enabled`): off, no step counts
/// against a limit and no signal is recorded. Set once at a controller's start
/// (`actors::lease::prepare_accounts`), read where steps are queued.
static ENABLED: AtomicBool = AtomicBool::new(true);
/// `[api_limits] max_concurrent`: the limit a new account starts with.
static MAX: AtomicI32 = AtomicI32::new(8);

/// This process's `[api_limits]` `enabled` and `max_concurrent`.
pub fn configure(on: bool, max: i32) {
    ENABLED.store(on, Ordering::Release);
    MAX.store(max.max(1), Ordering::Release);
}

/// Whether steps are given an account (see [`configure`]).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Acquire)
}

/// The limit a new account starts with (see [`configure`]).
pub fn max_concurrent() -> i32 {
    MAX.load(Ordering::Acquire)
}

/// The account of an agent step run with `model` and the command line template `agent_cmd`:
/// `<model>:<program>:<8 hex digits of the template's SHA-256>` (short enough for a metric's
/// label, distinct for distinct commands).
pub fn account_key(model: &str, agent_cmd: &str) -> String {
    let program = agent_cmd
        .split_whitespace()
        .next()
        .map(|w| w.rsplit('/').next().unwrap_or(w))
        .unwrap_or("agent");
    let digest = hex::encode(Sha256::digest(agent_cmd.trim().as_bytes()));
    format!("{model}:{program}:{}", &digest[..8])
}

/// An account's limit state, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitState {
    pub limit: i32,
    pub max: i32,
    pub successes: i32,
    pub last_signal: Option<String>,
    pub last_signal_at: Option<i64>,
    pub decreased_at: Option<i64>,
    pub pause_until: Option<i64>,
    /// The limit at which the API last refused for rate (429); `None` when none is known or
    /// the limit reached it again without a refusal.
    pub ceiling: Option<i32>,
}

impl LimitState {
    /// A new account: every slot open.
    pub fn fresh(max: i32) -> Self {
        LimitState {
            limit: max.max(1),
            max: max.max(1),
            successes: 0,
            last_signal: None,
            last_signal_at: None,
            decreased_at: None,
            pause_until: None,
            ceiling: None,
        }
    }

    /// The API pushed back on a step granted at `granted_at`, seen at `now`, the step held
    /// back for `pause_ms`. A rate limit or overload halves the limit and holds the whole
    /// account for `pause_ms` (so the account's other queued steps do not each run into the
    /// same wall one after another; the halved limit probes when the pause ends), unless the
    /// step was granted before the last halving (that wave was already answered); a usage
    /// limit pauses the account until `now + pause_ms`. A rate limit also remembers the limit
    /// it came at as the account's `ceiling` (see [`success`](Self::success)); an overload is
    /// the provider's, not a sign of the account's concurrency, and leaves it. Returns whether
    /// the limit changed.
    pub fn signal(&mut self, kind: ApiFailure, granted_at: i64, now: i64, pause_ms: i64) -> bool {
        self.last_signal = Some(kind.as_str().to_string());
        self.last_signal_at = Some(now);
        self.successes = 0;
        match kind {
            ApiFailure::RateLimited | ApiFailure::Overloaded => {
                if self.decreased_at.is_some_and(|d| granted_at < d) {
                    return false;
                }
                let before = self.limit;
                if kind == ApiFailure::RateLimited {
                    self.ceiling = Some(before);
                }
                self.limit = (self.limit / 2).max(1);
                self.decreased_at = Some(now);
                self.pause_for(now, pause_ms);
                self.limit != before
            }
            ApiFailure::UsageLimit { .. } => {
                self.pause_for(now, pause_ms);
                false
            }
            _ => false,
        }
    }

    /// Holds the account until `now + pause_ms`, or longer if it is held longer already.
    fn pause_for(&mut self, now: i64, pause_ms: i64) {
        let until = now + pause_ms.max(0);
        self.pause_until = Some(self.pause_until.map_or(until, |p| p.max(until)));
    }

    /// A step of the account completed (the API answered): after `recover_after` in a row the
    /// limit grows by one, up to `max`; to reach the `ceiling` (the limit last refused for
    /// rate) takes `recover_after` per slot, and reaching it forgets it (the account may allow
    /// more now). Returns whether the limit changed.
    pub fn success(&mut self, recover_after: i32) -> bool {
        if self.limit >= self.max {
            self.limit = self.max;
            self.successes = 0;
            return false;
        }
        self.successes += 1;
        let next = self.limit + 1;
        let run = match self.ceiling {
            Some(c) if next >= c => recover_after.max(1).saturating_mul(next),
            _ => recover_after.max(1),
        };
        if self.successes < run {
            return false;
        }
        self.limit = next;
        self.successes = 0;
        if self.ceiling.is_some_and(|c| next >= c) {
            self.ceiling = None;
        }
        true
    }

    /// With a new `max`: the limit stays below it, and an account at its old maximum moves to
    /// the new one.
    pub fn with_max(&mut self, max: i32) {
        let max = max.max(1);
        self.limit = if self.limit >= self.max {
            max
        } else {
            self.limit.min(max)
        };
        self.max = max;
    }

    /// Whether only the configured maximum holds the account: it is at `max` and the API
    /// never pushed back (the account may well allow more).
    pub fn at_cap(&self) -> bool {
        self.limit >= self.max && self.last_signal.is_none()
    }

    /// Whether the account is paused at `now`.
    pub fn paused(&self, now: i64) -> bool {
        self.pause_until.is_some_and(|p| p > now)
    }

    /// Why a step of the account waits, at `now`, with `in_use` of its steps running; `None`
    /// when it does not wait for the account.
    pub fn waiting_reason(&self, in_use: i64, now: i64) -> Option<String> {
        if let Some(until) = self.pause_until.filter(|p| *p > now) {
            let kind = self.last_signal.as_deref().unwrap_or("usage_limit");
            return Some(format!(
                "agent API {}: paused until {}",
                kind.replace('_', " "),
                crate::domain::time::rfc3339(until)
            ));
        }
        if in_use < self.limit as i64 {
            return None;
        }
        let mut reason = format!("agent API limited: {} of {} slots", self.limit, self.max);
        match (&self.last_signal, self.last_signal_at) {
            (Some(kind), Some(at)) => {
                let ago = (now - at).max(0) / 1000;
                reason.push_str(&format!("; {} {ago} s ago", kind.replace('_', " ")));
            }
            // Never pushed back: the configured maximum is what holds the step.
            _ if self.at_cap() => reason.push_str(" (api_limits.max_concurrent)"),
            _ => {}
        }
        Some(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_names_the_model_and_the_program_and_tells_commands_apart() {
        let a = account_key("opus", "claude -p --model {model}");
        assert!(a.starts_with("opus:claude:"), "{a}");
        assert_eq!(a.len(), "opus:claude:".len() + 8);
        assert_ne!(
            a,
            account_key("opus", "claude -p --verbose --model {model}")
        );
        assert_ne!(a, account_key("sonnet", "claude -p --model {model}"));
        assert!(account_key("m", "/usr/bin/stub x").starts_with("m:stub:"));
    }

    #[test]
    fn the_limit_halves_once_a_wave_and_never_below_one() {
        let mut s = LimitState::fresh(8);
        assert!(s.signal(ApiFailure::Overloaded, 10, 100, 15_000));
        assert_eq!(s.limit, 4);
        // The whole account is held for the step's pause.
        assert_eq!(s.pause_until, Some(15_100));
        assert!(s.paused(15_099) && !s.paused(15_100));
        // Granted before the halving: the same wave; the pause is not extended either.
        assert!(!s.signal(ApiFailure::RateLimited, 50, 110, 60_000));
        assert_eq!(s.limit, 4);
        assert_eq!(s.pause_until, Some(15_100));
        assert!(s.signal(ApiFailure::RateLimited, 105, 120, 10_000));
        assert_eq!(s.limit, 2);
        assert!(s.signal(ApiFailure::RateLimited, 125, 130, 10_000));
        assert!(!s.signal(ApiFailure::RateLimited, 135, 140, 10_000));
        assert_eq!(s.limit, 1);
        assert_eq!(s.last_signal.as_deref(), Some("rate_limited"));
    }

    #[test]
    fn the_limit_grows_by_one_after_a_run_of_successes_up_to_max() {
        let mut s = LimitState::fresh(3);
        s.signal(ApiFailure::RateLimited, 0, 1, 0);
        assert_eq!(s.limit, 1);
        for _ in 0..4 {
            assert!(!s.success(5));
        }
        assert!(s.success(5));
        assert_eq!((s.limit, s.successes), (2, 0));
        // A signal starts the count again.
        s.success(5);
        s.signal(ApiFailure::RateLimited, 0, 2, 0);
        assert_eq!(s.successes, 0);
        for _ in 0..20 {
            s.success(2);
        }
        assert_eq!(s.limit, 3);
    }

    #[test]
    fn growing_back_to_the_limit_last_refused_for_rate_takes_a_run_per_slot() {
        let mut s = LimitState::fresh(8);
        // A wave of 429s at 5: halved to 2, 5 remembered.
        s.limit = 5;
        assert!(s.signal(ApiFailure::RateLimited, 0, 1, 0));
        assert_eq!((s.limit, s.ceiling), (2, Some(5)));
        // Below it, a run of `recover_after` a slot, as before.
        for want in [3, 4] {
            for _ in 0..4 {
                assert!(!s.success(5));
            }
            assert!(s.success(5));
            assert_eq!(s.limit, want);
        }
        // To 5 again: 5 × 5 completions; then it is forgotten and growth is as before.
        for _ in 0..24 {
            assert!(!s.success(5));
        }
        assert!(s.success(5));
        assert_eq!((s.limit, s.ceiling), (5, None));
        for _ in 0..4 {
            assert!(!s.success(5));
        }
        assert!(s.success(5));
        assert_eq!(s.limit, 6);
        // An overload halves without a ceiling: it says nothing of the account's rate.
        assert!(s.signal(ApiFailure::Overloaded, 10, 20, 0));
        assert_eq!((s.limit, s.ceiling), (3, None));
    }

    #[test]
    fn a_usage_limit_pauses_until_its_reset_and_keeps_the_later_one() {
        let mut s = LimitState::fresh(8);
        assert!(!s.signal(
            ApiFailure::UsageLimit { resets_at_ms: None },
            0,
            1_000,
            60_000
        ));
        assert_eq!(s.pause_until, Some(61_000));
        s.signal(
            ApiFailure::UsageLimit { resets_at_ms: None },
            0,
            2_000,
            1_000,
        );
        assert_eq!(s.pause_until, Some(61_000));
        assert_eq!(s.limit, 8);
        assert!(s.paused(60_999) && !s.paused(61_000));
        let why = s.waiting_reason(0, 2_000).unwrap();
        assert!(
            why.starts_with("agent API usage limit: paused until 1970-01-01T00:01:01"),
            "{why}"
        );
        assert_eq!(s.waiting_reason(0, 61_000), None);
    }

    #[test]
    fn a_full_account_says_so_with_its_last_signal() {
        let mut s = LimitState::fresh(8);
        s.signal(ApiFailure::Overloaded, 0, 10_000, 15_000);
        s.successes = 0;
        // Held for the pause whatever runs; then the halved limit.
        let why = s.waiting_reason(0, 20_000).unwrap();
        assert!(
            why.starts_with("agent API overloaded: paused until 1970-01-01T00:00:25"),
            "{why}"
        );
        assert_eq!(s.waiting_reason(3, 25_000), None);
        assert_eq!(
            s.waiting_reason(4, 50_000).as_deref(),
            Some("agent API limited: 4 of 8 slots; overloaded 40 s ago")
        );
    }

    #[test]
    fn an_account_held_only_by_its_maximum_names_the_setting() {
        let s = LimitState::fresh(8);
        assert!(s.at_cap());
        assert_eq!(s.waiting_reason(7, 0), None);
        assert_eq!(
            s.waiting_reason(8, 0).as_deref(),
            Some("agent API limited: 8 of 8 slots (api_limits.max_concurrent)")
        );
    }

    #[test]
    fn a_new_max_moves_a_full_account_and_caps_a_limited_one() {
        let mut s = LimitState::fresh(8);
        s.with_max(12);
        assert_eq!((s.limit, s.max), (12, 12));
        s.limit = 5;
        s.with_max(4);
        assert_eq!((s.limit, s.max), (4, 4));
        s.limit = 2;
        s.with_max(10);
        assert_eq!((s.limit, s.max), (2, 10));
    }
}
