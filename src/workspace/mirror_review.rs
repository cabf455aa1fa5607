//! Reviewing a git run on the controller's cached mirror (docs/review.md "Git runs"): the
//! run's head is read from its newest checkpoint bundle into the mirror under a ref of its own
//! (`refs/loopd/runs/<id>`, which the mirror's fetches never prune), and its diff, its merge
//! into the target branch (pushed to the remote; nothing moves when the push is refused) and
//! the removal of its pushed branch are done there. Called by the review API and, at
//! completion, for the `review-diff.json` snapshot. Blocking.

use super::error::{Context, WorkspaceError};
use super::merge::merged_commit;
use super::mirror::Mirrors;
use super::remote::Op;
use super::{diff, repo, Result};
use crate::api::RunDiffSnapshot;
use crate::domain::MergeStrategy;
use git2::{Commit, Oid, Repository};

/// The ref under which the mirror keeps run `run_id`'s head.
pub fn run_ref(run_id: &str) -> String {
    format!("refs/loopd/runs/{run_id}")
}

/// A git run as its review sees it.
#[derive(Debug, Clone)]
pub struct GitRunHead {
    pub repo_url: String,
    pub run_id: String,
    pub run_branch: String,
    /// The commit the run started from.
    pub base_sha: String,
    /// The run's newest commit: its newest checkpoint's head, else `base_sha`.
    pub head: String,
}

fn find_commit<'r>(repository: &'r Repository, sha: &str) -> Result<Commit<'r>> {
    Oid::from_str(sha)
        .and_then(|oid| repository.find_commit(oid))
        .map_err(|_| WorkspaceError::NotFound {
            what: "commit",
            name: sha.to_string(),
            place: repo::place(repository),
        })
}

impl Mirrors {
    /// Puts the run's head into the mirror of its repository under [`run_ref`]: from `bundle`
    /// (the bytes of its newest checkpoint) when given, else `run.head` must be a commit the
    /// mirror has (the one the run started from). The mirror is made (fetched) when missing.
    pub fn import_run(&self, run: &GitRunHead, bundle: Option<&[u8]>) -> Result<()> {
        let path = self.path_of(&run.repo_url);
        if !path.exists() {
            self.fetch(&run.repo_url)?;
        }
        if let Some(bytes) = bundle {
            let dir = path.with_extension("reviews");
            let file = dir.join(format!("{}-{}.bundle", run.run_id, uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::write(&file, bytes))
                .context(|| format!("cannot write {}", file.display()))?;
            let imported = self.import(&run.repo_url, &file);
            let _ = std::fs::remove_file(&file);
            imported?;
        }
        let repository = repo::open(&path)?;
        let head = find_commit(&repository, &run.head)?;
        repository
            .reference(&run_ref(&run.run_id), head.id(), true, "loopd: run head")
            .context(|| format!("cannot record the head of run {}", run.run_id))?;
        Ok(())
    }

    /// The diff of an imported run: `base_sha..head`, shown as `base_ref` and the run branch.
    pub fn run_diff(&self, run: &GitRunHead, base_ref: &str) -> Result<RunDiffSnapshot> {
        diff::commits_diff(
            &self.path_of(&run.repo_url),
            (base_ref, &run.base_sha),
            (&run.run_branch, &run.head),
        )
    }

    /// Merges an imported run's head into the branch `target` of its remote with `strategy`
    /// and pushes it there; the target's new commit. The mirror is fetched first, so the merge
    /// is onto the remote's newest target (a missing target starts from the run's base). The
    /// push is not forced: a target moved meanwhile, or a refusal by the remote (protected
    /// branch, permission), fails with the remote's reason and changes nothing. A conflict
    /// fails before anything is pushed. A run already merged pushes nothing.
    pub fn merge_and_push(
        &self,
        run: &GitRunHead,
        target: &str,
        strategy: MergeStrategy,
    ) -> Result<String> {
        let url = self.remotes().check(&run.repo_url)?;
        self.fetch(&run.repo_url)?;
        let path = self.path_of(&run.repo_url);
        let repository = repo::open(&path)?;
        let head = find_commit(&repository, &run.head)?;
        let existing = repo::branch_exists(&repository, target);
        let current = match existing {
            true => repo::branch_commit(&repository, target)?,
            false => find_commit(&repository, &run.base_sha)?,
        };
        let new = merged_commit(
            &repository,
            &current,
            &head,
            (&run.run_branch, target),
            strategy,
        )?;
        if existing && new == current.id() {
            return Ok(new.to_string());
        }
        let refspec = format!("{new}:refs/heads/{target}");
        let args = [
            "push",
            "--porcelain",
            "--quiet",
            "--",
            url.as_str(),
            &refspec,
        ];
        self.remotes()
            .run(Some(&path), &url, Op::Push, None, &args)?;
        // The mirror follows at once (its next fetch would too).
        let lock = self.lock_of(&path);
        let _busy = lock.lock().unwrap_or_else(|e| e.into_inner());
        let _ = repository.reference(&format!("refs/heads/{target}"), new, true, "loopd: merged");
        Ok(new.to_string())
    }

    /// Deletes the branch `branch` of `repo_url`'s remote while it is at one of `commits` (what
    /// the run pushed); true when it was deleted. A branch that is missing, or that moved to
    /// another commit since, is left alone. The deletion is leased on the commit seen, so a
    /// push that lands meanwhile is not lost.
    pub fn delete_remote_branch(
        &self,
        repo_url: &str,
        branch: &str,
        commits: &[&str],
    ) -> Result<bool> {
        let url = self.remotes().check(repo_url)?;
        self.fetch(repo_url)?;
        let path = self.path_of(repo_url);
        let repository = repo::open(&path)?;
        let Ok(at) = repo::branch_commit(&repository, branch) else {
            return Ok(false);
        };
        let at = at.id().to_string();
        if !commits.contains(&at.as_str()) {
            tracing::info!(branch, "the run branch moved on the remote: left alone");
            return Ok(false);
        }
        let lease = format!("--force-with-lease=refs/heads/{branch}:{at}");
        let refspec = format!(":refs/heads/{branch}");
        let args = [
            "push",
            "--porcelain",
            "--quiet",
            &lease,
            "--",
            url.as_str(),
            &refspec,
        ];
        self.remotes()
            .run(Some(&path), &url, Op::Push, None, &args)?;
        let lock = self.lock_of(&path);
        let _busy = lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(mut r) = repository.find_reference(&format!("refs/heads/{branch}")) {
            let _ = r.delete();
        }
        Ok(true)
    }

    /// Drops the mirror's ref of run `run_id`.
    pub fn forget_run(&self, repo_url: &str, run_id: &str) {
        let Ok(repository) = self.open(repo_url) else {
            return;
        };
        let found = repository.find_reference(&run_ref(run_id));
        if let Ok(mut r) = found {
            let _ = r.delete();
        }
    }
}
