//! Which branch a git run works on and pushes, decided once, in the transaction that inserts
//! the run, before any agent work: the branch its name gives (`run/<name>`), or that with
//! `-2`, `-3`, … appended while the remote has it already (as the mirror saw it when the run
//! was submitted) or another PENDING, RUNNING or PAUSED git run of the same remote works on
//! it; otherwise its final push would be refused after its work was done. A run given the
//! name of a run not ended is refused instead (409 `run_branch_in_use`): the user most likely
//! submitted it twice. A retry keeps its run's branch and is refused while another run not
//! ended works on it. Called by the scheduler inside the transactions that insert or
//! re-queue the run.

use super::SchedError;
use crate::actors::run_progress::run::id_tail;
use crate::db::models::RunRow;
use crate::db::{self, Conn};
use crate::domain::WorkspaceSource;
use crate::workspace::naming::slug;
use std::collections::HashSet;

/// Sets the run branch of the new git run `run`, none of `on_remote` nor one that another
/// git run not ended holds; refuses `run` while a run not ended has its name's branch.
pub(super) fn claim_run_branch(
    c: &mut Conn,
    run: &mut RunRow,
    on_remote: &[String],
) -> Result<(), SchedError> {
    let Some(url) = git_remote(run) else {
        return Ok(());
    };
    let config = run.config();
    let named = run.named_git_branch(&config);
    if named.ends_with(&format!("-{}", id_tail(&run.id))) {
        run.run_branch = Some(named); // named after its spec: the branch is the run's own
        return Ok(());
    }
    db::runs::serialize_branch_claims(c)?;
    let holders = holders_on(c, run, &url)?;
    // Cheap tests first (reading a run's branch parses its config): only runs of the same
    // name's slug can have the same name's branch.
    let name = slug(&run.name);
    if let Some(r) = holders
        .iter()
        .find(|r| slug(&r.name) == name && r.named_git_branch(&r.config()) == named)
    {
        return Err(in_use(&named, &url, r));
    }
    let taken: HashSet<String> = holders
        .iter()
        .map(|r| r.git_run_branch(&r.config()))
        .chain(on_remote.iter().cloned())
        .collect();
    let free = std::iter::once(named.clone())
        .chain((2..).map(|n| format!("{named}-{n}")))
        .find(|b| !taken.contains(b))
        .unwrap_or(named);
    run.run_branch = Some(free);
    Ok(())
}

/// Refuses the retry of `run` while another git run not ended holds its run branch.
pub(super) fn refuse_shared_branch(c: &mut Conn, run: &RunRow) -> Result<(), SchedError> {
    let Some(url) = git_remote(run) else {
        return Ok(());
    };
    let branch = run.git_run_branch(&run.config());
    if branch.ends_with(&format!("-{}", id_tail(&run.id))) {
        return Ok(()); // named after its spec: the branch is the run's own
    }
    db::runs::serialize_branch_claims(c)?;
    let holders = holders_on(c, run, &url)?;
    match holders
        .iter()
        .find(|r| r.git_run_branch(&r.config()) == branch)
    {
        Some(r) => Err(in_use(&branch, &url, r)),
        None => Ok(()),
    }
}

/// The remote of a git run.
fn git_remote(run: &RunRow) -> Option<String> {
    (run.workspace_source == WorkspaceSource::Git.as_str())
        .then(|| run.repo_url.clone())
        .flatten()
}

/// The git runs not ended of `url` other than `run`.
fn holders_on(c: &mut Conn, run: &RunRow, url: &str) -> Result<Vec<RunRow>, SchedError> {
    Ok(db::runs::active_git_runs(c)?
        .into_iter()
        .filter(|r| r.id != run.id && r.repo_url.as_deref().is_some_and(|u| same_remote(u, url)))
        .collect())
}

fn in_use(branch: &str, url: &str, holder: &RunRow) -> SchedError {
    SchedError::BranchInUse(format!(
        "run branch {branch} of {url} is in use by run {} ({}, {}): give this run another \
         name, or wait until that run has ended",
        holder.id, holder.name, holder.status
    ))
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
