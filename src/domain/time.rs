//! Timestamps: stored as milliseconds since the epoch, shown as RFC 3339 UTC strings.

use chrono::{DateTime, SecondsFormat, Utc};

/// Milliseconds since the epoch, from this process's clock.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// RFC 3339 UTC with millisecond precision and a `Z` suffix.
pub fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_milliseconds_as_utc_with_z() {
        assert_eq!(
            super::rfc3339(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
    }
}
