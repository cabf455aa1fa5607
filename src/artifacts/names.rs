//! Artifact names and store keys: the one place that decides which names are acceptable, so a
//! name taken from a URL (`PUT /steps/{id}/artifacts/{name}`, `GET /runs/{id}/artifacts/{name}`)
//! can never reach outside `runs/<run_id>/`. Pure functions; anyone may call them.

use super::ArtifactError;

/// Longest accepted artifact name, in bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// Checks that `name` is a plain relative path: `/`-separated segments, none empty, `.` or
/// `..`; no leading `/`, no backslash, no control character or NUL, no bidirectional override
/// or U+FFFD (they make a name read as another); at most 255 bytes.
pub fn validate_name(name: &str) -> Result<(), ArtifactError> {
    let reject = |reason: &'static str| {
        Err(ArtifactError::InvalidName {
            name: printable(name),
            reason,
        })
    };
    if name.is_empty() {
        return reject("it is empty");
    }
    if name.len() > MAX_NAME_BYTES {
        return reject("it is longer than 255 bytes");
    }
    if name.chars().any(char::is_control) {
        return reject("it contains a control character");
    }
    if !crate::domain::text::is_plain(name) {
        return reject("it contains a bidirectional override or U+FFFD");
    }
    if name.contains('\\') {
        return reject("it contains a backslash");
    }
    if name.starts_with('/') {
        return reject("it is an absolute path");
    }
    for segment in name.split('/') {
        match segment {
            "" => return reject("it has an empty path segment"),
            "." | ".." => return reject("it has a `.` or `..` segment"),
            _ => {}
        }
    }
    Ok(())
}

/// Checks a run id before it becomes a key segment: one non-empty segment of the same
/// character rules as a name.
pub(crate) fn validate_run_id(run_id: &str) -> Result<(), ArtifactError> {
    let ok = !run_id.is_empty() && !run_id.contains('/') && validate_name(run_id).is_ok();
    if ok {
        Ok(())
    } else {
        Err(ArtifactError::InvalidName {
            name: printable(run_id),
            reason: "a run id must be a single path segment",
        })
    }
}

/// The store key of artifact `name` of run `run_id`: `runs/<run_id>/<name>`.
pub fn artifact_key(run_id: &str, name: &str) -> Result<String, ArtifactError> {
    validate_run_id(run_id)?;
    validate_name(name)?;
    Ok(format!("runs/{run_id}/{name}"))
}

/// The store key of artifact `name` written for one lease of a step (a worker that uploads to
/// the store itself): `runs/<run_id>/steps/<step_id>/<epoch>/<name>`. Each lease has its own
/// keys, so a worker that lost its lease and uploads late cannot overwrite what the step's
/// next holder stored and the controller recorded.
pub fn attempt_key(
    run_id: &str,
    step_id: &str,
    epoch: i64,
    name: &str,
) -> Result<String, ArtifactError> {
    validate_run_id(step_id)?;
    artifact_key(run_id, &format!("steps/{step_id}/{epoch}/{name}"))
}

/// Checks a key handed back by a caller (it must be one [`artifact_key`] could have made).
pub(crate) fn validate_key(key: &str) -> Result<(), ArtifactError> {
    let rest = key.strip_prefix("runs/").unwrap_or("");
    match rest.split_once('/') {
        Some((run_id, name)) => {
            validate_run_id(run_id)?;
            validate_name(name)
        }
        None => Err(ArtifactError::InvalidName {
            name: printable(key),
            reason: "a key must look like runs/<run_id>/<name>",
        }),
    }
}

/// The name as it may appear in an error message: control characters escaped, cut short.
fn printable(name: &str) -> String {
    let escaped: String = name.escape_debug().collect();
    match escaped.char_indices().nth(80) {
        Some((i, _)) => format!("{}…", &escaped[..i]),
        None => escaped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(name: &str) -> bool {
        matches!(validate_name(name), Err(ArtifactError::InvalidName { .. }))
    }

    #[test]
    fn plain_relative_names_are_accepted() {
        for name in [
            "iter-01-impl.log",
            "bundles/run.bundle",
            "a/b/c.txt",
            "..hidden",
            "x..y",
            ".loop",
            "ünïcode name",
        ] {
            assert!(validate_name(name).is_ok(), "{name:?} should be accepted");
        }
        assert!(validate_name(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn names_that_could_escape_the_run_directory_are_rejected() {
        for name in [
            "",
            "../x",
            "..",
            ".",
            "a/../b",
            "a/..",
            "/abs",
            "a//b",
            "a/./b",
            "a/",
            "a\\b",
            "..\\x",
            "nul\0byte",
            "tab\there",
            "new\nline",
            "del\x7f",
        ] {
            assert!(rejected(name), "{name:?} should be rejected");
        }
        assert!(rejected(&"a".repeat(256)));
        // 128 two-byte characters are 256 bytes: the limit counts bytes, not characters.
        assert!(rejected(&"é".repeat(128)));
    }

    #[test]
    fn names_that_read_as_other_names_are_rejected() {
        for name in [
            "report\u{202E}vsc.txt",
            "a\u{2066}b",
            "a\u{200F}",
            "lossy\u{FFFD}.log",
        ] {
            assert!(rejected(name), "{name:?} should be rejected");
        }
        let e = validate_name("x\u{202E}y").unwrap_err().to_string();
        assert!(
            e.contains("bidirectional") && e.contains("\\u{202e}"),
            "{e}"
        );
    }

    #[test]
    fn the_error_names_the_reason_and_escapes_the_name() {
        let e = validate_name("a\0b").unwrap_err().to_string();
        assert!(e.contains("a\\0b"), "{e}");
        assert!(e.contains("control character"), "{e}");
    }

    #[test]
    fn keys_are_runs_run_id_name() {
        assert_eq!(
            artifact_key("r-1", "bundles/run.bundle").unwrap(),
            "runs/r-1/bundles/run.bundle"
        );
        assert!(artifact_key("a/b", "x").is_err());
        assert!(artifact_key("..", "x").is_err());
        assert!(artifact_key("", "x").is_err());
        assert!(artifact_key("r", "../x").is_err());
    }

    #[test]
    fn only_keys_of_the_artifact_shape_are_accepted_back() {
        assert!(validate_key("runs/r-1/iter-01-impl.log").is_ok());
        assert!(validate_key("runs/r-1/bundles/run.bundle").is_ok());
        for key in [
            "runs/r-1",
            "runs//x",
            "runs/r/../../etc",
            "other/r/x",
            "/runs/r/x",
        ] {
            assert!(validate_key(key).is_err(), "{key:?} should be rejected");
        }
    }
}
