//! One run branch, one run not ended: a git run (submitted or retried) whose branch another
//! PENDING, RUNNING or PAUSED git run of the same remote works on is refused, because both
//! would push it and the second push would fail after its agent work was done. Only runs given
//! a name of their own can meet (a spec-named run's branch ends with its id's tail). Called by
//! the scheduler inside the transaction that inserts or re-queues the run.

use super::SchedError;
use crate::actors::run_progress::run::id_tail;
use crate::db::models::RunRow;
use crate::db::{self, Conn};
use crate::domain::WorkspaceSource;
use crate::workspace::naming::slug;

/// Refuses `run` while another git run not ended holds its run branch on its remote.
pub(super) fn refuse_shared_branch(c: &mut Conn, run: &RunRow) -> Result<(), SchedError> {
    if run.workspace_source != WorkspaceSource::Git.as_str() {
        return Ok(());
    }
    let Some(url) = run.repo_url.as_deref() else {
        return Ok(());
    };
    let branch = run.git_run_branch(&run.config());
    if branch.ends_with(&format!("-{}", id_tail(&run.id))) {
        return Ok(()); // named after its spec: the branch is the run's own
    }
    db::runs::serialize_branch_claims(c)?;
    // Cheap tests first (reading a run's branch parses its config): a run given a name works
    // on `<prefix><slug of the name>`, so only runs of the same slug can meet (two prefixes
    // that make one branch of two names, `run/a-` + `b` and `run/` + `a-b`, are let through).
    let name = slug(&run.name);
    let holder = db::runs::active_git_runs(c)?.into_iter().find(|r| {
        r.id != run.id
            && slug(&r.name) == name
            && r.repo_url.as_deref().is_some_and(|u| same_remote(u, url))
            && r.git_run_branch(&r.config()) == branch
    });
    match holder {
        Some(r) => Err(SchedError::BranchInUse(format!(
            "run branch {branch} of {url} is in use by run {} ({}, {}): give this run another \
             name, or wait until that run has ended",
            r.id, r.name, r.status
        ))),
        None => Ok(()),
    }
}

/// Whether two remote URLs name one repository (`…/repo`, `…/repo/` and `…/repo.git`).
fn same_remote(a: &str, b: &str) -> bool {
    fn plain(u: &str) -> &str {
        let u = u.trim().trim_end_matches('/');
        u.strip_suffix(".git").unwrap_or(u)
    }
    plain(a) == plain(b)
}

#[cfg(test)]
mod tests {
    use super::same_remote;

    #[test]
    fn a_remote_is_the_same_with_or_without_its_git_suffix_or_a_slash() {
        assert!(same_remote("https://h/o/app.git", "https://h/o/app"));
        assert!(same_remote("git@h:o/app.git", "git@h:o/app/"));
        assert!(!same_remote("https://h/o/app", "https://h/o/app2"));
    }
}
