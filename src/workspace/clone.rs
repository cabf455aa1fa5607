//! The worker's clone of a git run's repository (ARCHITECTURE "Workspaces"): preparing the work
//! dir at the commit a step must start from (fetched through `remote`), and the checkpoint
//! commit of what the agent left after the step. Called by the worker's step executor (bundles
//! live in `bundle.rs`).

use super::bundle::import_bundle;
use super::error::{Context, WorkspaceError};
use super::remote::{Op, Remotes};
use super::{repo, Result};
use crate::api::HandedCredential;
use git2::build::CheckoutBuilder;
use git2::{IndexAddOption, Oid, Repository};
use std::fs;
use std::path::Path;

/// The line that keeps the runner's notes file out of checkpoint commits.
const RUNNER_NOTES_EXCLUDE: &str = "/.loop/runner-notes.txt";

/// Makes `dir` a clone of `repo_url` with `run_branch` checked out at the commit the step starts
/// from, and returns that commit's sha. An existing clone of the same URL is fetched and reused;
/// anything else in `dir` is replaced by a fresh clone. The start commit is the checkpoint's
/// head (its bundle imported first), else `repo_ref` (a branch of the remote, a tag or a sha):
/// never the local `run_branch`, whose commits may be the work of a step whose lease was lost.
/// The work tree is reset hard to it and untracked files are removed (ignored ones are kept);
/// `/.loop/runner-notes.txt` is added to `.git/info/exclude`.
pub fn prepare_clone(
    dir: &Path,
    remote: Source<'_>,
    repo_ref: &str,
    run_branch: &str,
    checkpoint: Option<(&Path, &str)>,
) -> Result<String> {
    let repo_url = remote.url;
    let repository = open_or_clone(dir, &remote)?;
    let start = match checkpoint {
        Some((bundle, head)) => {
            // The newest bundle may come from a later attempt whose completion was refused
            // (its lease was lost): it still holds the recorded head in its history, and the
            // step starts from that head, not from the refused work.
            let imported = import_bundle(dir, bundle)?;
            let oid = Oid::from_str(head).context(|| format!("bad checkpoint head {head}"))?;
            if repository.find_commit(oid).is_err() {
                return Err(WorkspaceError::InvalidBundle {
                    path: bundle.to_path_buf(),
                    reason: format!(
                        "it does not contain the checkpoint {head} (its head is {imported})"
                    ),
                });
            }
            oid
        }
        // Every worker starts a run without a checkpoint at the same commit.
        None => match resolve_remote_ref(&repository, repo_url, repo_ref) {
            Ok(oid) => oid,
            // A commit no branch of the remote holds any more: ask for it by its id.
            Err(not_found) if Oid::from_str(repo_ref).is_ok() && repo_ref.len() == 40 => {
                fetch(dir, &remote, &[repo_ref]).map_err(|_| not_found)?;
                resolve_remote_ref(&repository, repo_url, repo_ref)?
            }
            Err(e) => return Err(e),
        },
    };
    check_out_branch_at(&repository, run_branch, start)?;
    exclude_runner_notes(&repository)?;
    Ok(start.to_string())
}

/// Commits everything the agent changed in `dir` (untracked files included, ignored files not)
/// on the current branch, as the repository's configured user or `loopd <loopd@localhost>`.
/// Returns HEAD, committed or not.
pub fn checkpoint_commit(dir: &Path, message: &str) -> Result<String> {
    let repository = repo::open(dir)?;
    let parent = repository.head().and_then(|h| h.peel_to_commit()).ok();
    if repo::is_clean(&repository)? {
        return head_sha(&repository);
    }
    let mut index = repository
        .index()
        .context(|| format!("cannot read the index of {}", dir.display()))?;
    let staged = index
        .add_all(["*"], IndexAddOption::DEFAULT, None)
        .and_then(|()| index.update_all(["*"], None))
        .and_then(|()| index.write());
    staged.context(|| format!("cannot stage the changes in {}", dir.display()))?;
    let tree_id = index
        .write_tree()
        .context(|| format!("cannot write the tree of {}", dir.display()))?;
    if parent.as_ref().map(|p| p.tree_id()) == Some(tree_id) {
        return head_sha(&repository);
    }
    let tree = repository
        .find_tree(tree_id)
        .context(|| "cannot read the staged tree".into())?;
    let signature = repo::signature(&repository)?;
    let parents: Vec<_> = parent.iter().collect();
    let commit = repository
        .commit(
            Some("HEAD"),
            &signature,
            &signature,
            message,
            &tree,
            &parents,
        )
        .context(|| format!("cannot commit the checkpoint in {}", dir.display()))?;
    Ok(commit.to_string())
}

fn head_sha(repository: &Repository) -> Result<String> {
    let head = repository
        .head()
        .and_then(|h| h.peel_to_commit())
        .context(|| format!("cannot read HEAD of {}", repo::place(repository)))?;
    Ok(head.id().to_string())
}

/// Where a clone comes from: the remote's URL, the configured access to remotes, and the
/// credential the controller handed over with the assignment, if any.
pub struct Source<'a> {
    pub url: &'a str,
    pub remotes: &'a Remotes,
    pub credential: Option<&'a HandedCredential>,
}

/// The remote-tracking branches and tags of a clone.
const CLONE_REFSPECS: [&str; 2] = [
    "+refs/heads/*:refs/remotes/origin/*",
    "+refs/tags/*:refs/tags/*",
];

/// The clone in `dir` when it is one of the source's URL (fetched), else a fresh clone: an
/// empty repository whose origin is the URL, fetched. The URL in `.git/config` never holds a
/// credential (URLs with passwords are refused, handed credentials travel in the
/// environment of the git command only).
fn open_or_clone(dir: &Path, remote: &Source<'_>) -> Result<Repository> {
    if let Ok(existing) = Repository::open(dir) {
        let same_url = existing
            .find_remote("origin")
            .ok()
            .is_some_and(|r| r.url().ok() == Some(remote.url));
        if same_url {
            fetch(dir, remote, &CLONE_REFSPECS)?;
            return Ok(existing);
        }
    }
    if dir.exists() {
        fs::remove_dir_all(dir).context(|| format!("cannot clear {}", dir.display()))?;
    }
    let repository =
        Repository::init(dir).context(|| format!("cannot create a clone at {}", dir.display()))?;
    repository
        .remote("origin", remote.url)
        .context(|| format!("cannot add origin to {}", dir.display()))?;
    if let Err(e) = fetch(dir, remote, &CLONE_REFSPECS) {
        // Half a clone is no clone: the next step clones again.
        let _ = fs::remove_dir_all(dir);
        return Err(e);
    }
    Ok(repository)
}

/// `git fetch --prune <url> <refspecs>` in `dir`.
fn fetch(dir: &Path, remote: &Source<'_>, refspecs: &[&str]) -> Result<()> {
    let url = super::remote::parse(remote.url)?;
    let mut args = vec![
        "fetch",
        "--prune",
        "--quiet",
        "--no-write-fetch-head",
        "--",
        url.as_str(),
    ];
    args.extend(refspecs);
    remote
        .remotes
        .run(Some(dir), &url, Op::Fetch, remote.credential, &args)?;
    Ok(())
}

/// `repo_ref` as a branch of origin, a tag, or any revision (a sha).
fn resolve_remote_ref(repository: &Repository, repo_url: &str, repo_ref: &str) -> Result<Oid> {
    let candidates = [
        format!("refs/remotes/origin/{repo_ref}"),
        format!("refs/tags/{repo_ref}"),
        repo_ref.to_string(),
    ];
    candidates
        .iter()
        .find_map(|spec| {
            let object = repository.revparse_single(spec).ok()?;
            object.peel_to_commit().ok().map(|c| c.id())
        })
        .ok_or_else(|| WorkspaceError::NotFound {
            what: "ref",
            name: repo_ref.to_string(),
            place: repo_url.to_string(),
        })
}

/// Points `branch` at `start`, checks it out, and makes the work tree exactly `start`'s tree.
fn check_out_branch_at(repository: &Repository, branch: &str, start: Oid) -> Result<()> {
    let commit = repository
        .find_commit(start)
        .context(|| format!("cannot find commit {start}"))?;
    repository
        .checkout_tree(
            commit.as_object(),
            Some(CheckoutBuilder::new().force().remove_untracked(true)),
        )
        .context(|| format!("cannot check out {start}"))?;
    let refname = format!("refs/heads/{branch}");
    repository
        .reference(&refname, start, true, "loopd: start of step")
        .context(|| format!("cannot point {branch} at {start}"))?;
    repository
        .set_head(&refname)
        .context(|| format!("cannot check out {branch}"))?;
    repository
        .checkout_head(Some(CheckoutBuilder::new().force().remove_untracked(true)))
        .context(|| format!("cannot reset {branch} to {start}"))
}

fn exclude_runner_notes(repository: &Repository) -> Result<()> {
    super::exclude::add_line(repository, RUNNER_NOTES_EXCLUDE)
}
