//! Parse rules of `.loop/config` values and of the `key=value` text itself.

use super::ConfigError;
use std::str::FromStr;

/// Parses `key=value` text: `#` comments and blank lines skipped, key and value trimmed, one
/// pair of surrounding `"` or `'` removed from the value.
pub fn parse_kv(text: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut pairs = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let invalid = || ConfigError::InvalidLine {
            line: index + 1,
            text: line.to_string(),
        };
        let (key, value) = line.split_once('=').ok_or_else(invalid)?;
        let key = key.trim();
        if key.is_empty() {
            return Err(invalid());
        }
        pairs.push((key.to_string(), unquote(value.trim()).to_string()));
    }
    Ok(pairs)
}

fn unquote(value: &str) -> &str {
    for quote in ['"', '\''] {
        if value.len() >= 2 && value.starts_with(quote) && value.ends_with(quote) {
            return &value[1..value.len() - 1];
        }
    }
    value
}

pub(super) fn invalid(key: &str, value: &str, expected: &str) -> ConfigError {
    ConfigError::InvalidValue {
        key: key.to_string(),
        value: value.to_string(),
        expected: expected.to_string(),
    }
}

pub(super) fn parse_bool(key: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "y" | "on" => Ok(true),
        "false" | "0" | "no" | "n" | "off" => Ok(false),
        _ => Err(invalid(
            key,
            value,
            "true/false, 1/0, yes/no, y/n or on/off",
        )),
    }
}

pub(super) fn parse_int<T: FromStr>(key: &str, value: &str) -> Result<T, ConfigError> {
    let trimmed = value.trim();
    // FromStr for unsigned ints accepts a leading '+'; the old parser did not.
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = trimmed.parse() {
            return Ok(n);
        }
    }
    Err(invalid(key, value, "a non-negative integer"))
}

pub(super) fn parse_enum<T: FromStr + std::fmt::Display>(
    key: &str,
    value: &str,
    all: &[T],
) -> Result<T, ConfigError> {
    value.trim().to_ascii_lowercase().parse().map_err(|_| {
        let choices: Vec<String> = all.iter().map(ToString::to_string).collect();
        invalid(key, value, &format!("one of {}", choices.join(", ")))
    })
}

pub(super) fn optional(value: &str) -> Option<String> {
    let trimmed = value.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

pub(super) fn split_list(value: &str, separator: Option<char>) -> Vec<String> {
    let parts: Vec<&str> = match separator {
        Some(sep) => value.split(sep).collect(),
        None => value.split_whitespace().collect(),
    };
    parts
        .into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Splits an agent command line like a shell would (quotes, backslashes), without a shell.
pub(super) fn split_command(key: &str, value: &str) -> Result<Vec<String>, ConfigError> {
    let words = shlex::split(value)
        .ok_or_else(|| invalid(key, value, "a command line with balanced quotes"))?;
    if words.is_empty() {
        return Err(invalid(key, value, "a non-empty command line"));
    }
    Ok(words)
}
