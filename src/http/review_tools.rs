//! What the review routes share between a run's worktree (`review.rs`) and a git run's mirror
//! on the controller (`review_git.rs`): git failures as answers, blocking git work off the
//! async threads, and the `gh` CLI that opens pull requests.

use super::error::ApiError;
use crate::workspace::{Cause, WorkspaceError};
use actix_web::http::StatusCode;
use std::time::Duration;

/// How long `gh pr create` may take.
const GH_TIMEOUT: Duration = Duration::from_secs(120);

/// A git failure as an answer: conflicts and missing branches say what is wrong; anything
/// else is internal.
fn git_error(e: WorkspaceError) -> ApiError {
    match e {
        WorkspaceError::Conflict { .. } => ApiError::conflict("merge_conflict", e.to_string()),
        WorkspaceError::DirtyCheckout { .. } => ApiError::conflict("dirty_checkout", e.to_string()),
        WorkspaceError::NotFound { .. } => ApiError::conflict("branch_not_found", e.to_string()),
        WorkspaceError::Open { .. } => ApiError::conflict("workspace_unavailable", e.to_string()),
        // Remote failures name the host and the cause, never git's own words.
        WorkspaceError::Remote(r) => match &r.cause {
            Cause::Rejected(_) => ApiError::conflict("push_rejected", r.to_string()),
            Cause::NotAllowed(_) | Cause::BadUrl(_) => {
                ApiError::conflict("remote_not_allowed", r.to_string())
            }
            _ => ApiError::new(StatusCode::BAD_GATEWAY, "remote_failed", r.to_string()),
        },
        other => ApiError::internal(other),
    }
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, WorkspaceError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
        .map_err(git_error)
}

/// Runs `gh pr create` in `dir`, for the repository `repo` (`[HOST/]OWNER/REPO`) when given,
/// else for the one gh finds from `dir`'s remotes; the URL it printed.
pub(super) async fn gh_pr_create(
    dir: &std::path::Path,
    repo: Option<&str>,
    head: &str,
    base: &str,
    title: &str,
    body: &str,
) -> Result<String, ApiError> {
    let mut cmd = tokio::process::Command::new("gh");
    cmd.args(["pr", "create"]);
    if let Some(repo) = repo {
        cmd.args(["--repo", repo]);
    }
    cmd.args(["--head", head, "--base", base])
        .args(["--title", title, "--body", body])
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(GH_TIMEOUT, cmd.output()).await {
        Err(_) => {
            return Err(gh_failed(format!(
                "gh pr create did not finish within {}s",
                GH_TIMEOUT.as_secs()
            )))
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return Err(gh_unavailable()),
        Ok(Err(e)) => return Err(gh_failed(format!("cannot run gh: {e}"))),
        Ok(Ok(out)) => out,
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(gh_failed(format!(
            "gh pr create failed: {}",
            last_chars(stderr.trim(), 2000)
        )));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().map(str::trim).rfind(|l| !l.is_empty()) {
        Some(url) => Ok(url.to_string()),
        None => Err(gh_failed("gh pr create returned empty output".into())),
    }
}

/// 503: there is no `gh` to run.
pub(super) fn gh_unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "gh_unavailable",
        "gh CLI not available: install GitHub's gh on the daemon's PATH",
    )
}

/// Whether an executable `gh` is on the daemon's `PATH` (checked before a git run's branch is
/// pushed for a pull request that could not be opened).
pub(super) fn gh_on_path() -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join("gh"))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// `gh` ran and failed: what it said is the user's to see (it is their tool and account).
fn gh_failed(msg: String) -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, "gh_failed", msg)
}

fn last_chars(s: &str, n: usize) -> &str {
    match s.char_indices().rev().nth(n) {
        Some((i, _)) => &s[i..],
        None => s,
    }
}
