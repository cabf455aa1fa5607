//! The controller's cache of bare mirrors of git-run repositories (ARCHITECTURE "Workspaces"):
//! fetching (allowed URLs only), resolving the run's ref to a commit, reading the spec, plan
//! and `.loop/config` at that commit (kept: a commit's files never change), and pushing a
//! finished run's branch back. Used by the controller when a git run is submitted, when a
//! step's prompt is built and when a run finishes.

use super::bundle::import_bundle;
use super::error::{Context, WorkspaceError};
use super::remote::{Op, Remotes};
use super::{repo, Result};
use git2::{Oid, Repository};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Bare mirrors of remote repositories, one directory per URL under `root`.
#[derive(Debug, Clone)]
pub struct Mirrors {
    root: PathBuf,
    remotes: Remotes,
    /// Files read at full commit ids, which never change: every queued step's prompt reads
    /// the same few files of its run's commit.
    read: Arc<Mutex<HashMap<FileAt, Option<Vec<u8>>>>>,
    /// One lock per mirror: two fetches of one mirror at once would fight over its ref locks
    /// and fail.
    busy: Arc<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>>,
}

/// A file of a repository at a commit: (url, commit id, path).
type FileAt = (String, String, String);

/// Most files [`Mirrors::read_file`] keeps.
const READ_CAP: usize = 1024;

impl Mirrors {
    /// Mirrors kept under `root` (created on the first fetch), fetched through `remotes`.
    pub fn new(root: impl Into<PathBuf>, remotes: Remotes) -> Self {
        Mirrors {
            root: root.into(),
            remotes,
            read: Arc::default(),
            busy: Arc::default(),
        }
    }

    /// The configured access to remotes.
    pub fn remotes(&self) -> &Remotes {
        &self.remotes
    }

    /// The directory of the mirror of `repo_url`: a hash of the URL, so any URL is a safe name.
    pub fn path_of(&self, repo_url: &str) -> PathBuf {
        let digest = Sha256::digest(repo_url.as_bytes());
        self.root
            .join(format!("{}.git", &hex::encode(digest)[..32]))
    }

    /// Creates the mirror of `repo_url` if needed and brings every branch and tag up to date
    /// (`+refs/heads/*:refs/heads/*`, deleted branches pruned); a new mirror's HEAD is the
    /// remote's HEAD branch. The URL is checked against `[git]`'s allow-lists first: a refused
    /// one is never contacted.
    pub fn fetch(&self, repo_url: &str) -> Result<()> {
        let url = self.remotes.check(repo_url)?;
        let path = self.path_of(repo_url);
        let lock = self.lock_of(&path);
        let _busy = lock.lock().unwrap_or_else(|e| e.into_inner());
        if path.exists() {
            let refspecs = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"];
            let mut args = vec!["fetch", "--prune", "--quiet", "--", url.as_str()];
            args.extend(refspecs);
            self.remotes
                .run(Some(&path), &url, Op::Fetch, None, &args)?;
            return Ok(());
        }
        fs::create_dir_all(&self.root)
            .context(|| format!("cannot create {}", self.root.display()))?;
        // Cloned beside its final name and renamed into place, so a concurrent fetch never
        // sees a half-made repository.
        let staging = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4()));
        let staging_arg = staging.to_string_lossy().to_string();
        let args = [
            "clone",
            "--bare",
            "--quiet",
            "--",
            url.as_str(),
            &staging_arg,
        ];
        let clean = || {
            let _ = fs::remove_dir_all(&staging);
        };
        let cloned = self
            .remotes
            .run_cleaning(None, &url, Op::Fetch, None, &args, &clean);
        if let Err(e) = cloned {
            let _ = fs::remove_dir_all(&staging);
            return Err(e.into());
        }
        if fs::rename(&staging, &path).is_err() {
            // Someone else created it meanwhile: use theirs.
            let _ = fs::remove_dir_all(&staging);
        }
        Ok(())
    }

    /// Pushes `head` as branch `branch` of `repo_url` (a completed run's branch). `bundle`, when
    /// given, holds the commits (the run's final checkpoint); it is imported into the mirror
    /// first, which is fetched when the bundle needs a commit it lacks (without a bundle, `head`
    /// is a commit of the remote). A branch already at `head` is left alone; any other refusal
    /// (non-fast-forward, protected branch, permission) is the error.
    pub fn push_branch(
        &self,
        repo_url: &str,
        bundle: Option<&Path>,
        head: &str,
        branch: &str,
    ) -> Result<()> {
        let url = self.remotes.check(repo_url)?;
        let path = self.path_of(repo_url);
        if !path.exists() {
            self.fetch(repo_url)?;
        }
        // Packs land atomically and the push writes no local ref: no mirror lock is needed.
        if let Some(bundle) = bundle {
            self.import(repo_url, bundle)?;
        }
        let refspec = format!("{head}:refs/heads/{branch}");
        let args = [
            "push",
            "--porcelain",
            "--quiet",
            "--",
            url.as_str(),
            &refspec,
        ];
        self.remotes.run(Some(&path), &url, Op::Push, None, &args)?;
        Ok(())
    }

    /// Imports the commits of the bundle file `bundle` into the mirror of `repo_url` (which
    /// must exist), fetching the mirror first when the bundle needs a commit it lacks; the
    /// bundle's head sha. No ref is written.
    pub(super) fn import(&self, repo_url: &str, bundle: &Path) -> Result<String> {
        let path = self.path_of(repo_url);
        match import_bundle(&path, bundle) {
            Err(WorkspaceError::MissingPrerequisite { .. }) => {
                self.fetch(repo_url)?;
                import_bundle(&path, bundle)
            }
            other => other,
        }
    }

    /// The lock of the mirror at `path`.
    pub(super) fn lock_of(&self, path: &Path) -> Arc<Mutex<()>> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        busy.entry(path.to_path_buf()).or_default().clone()
    }

    /// Resolves `reference` in the mirror of `repo_url` to `(name, sha)`: a branch name, a full
    /// ref or a commit sha (abbreviated ones too); `None` means the remote's HEAD branch. The
    /// name is the branch name when the ref is a branch, else `reference` as given.
    pub fn resolve_ref(&self, repo_url: &str, reference: Option<&str>) -> Result<(String, String)> {
        let mirror = self.open(repo_url)?;
        let not_found = |name: &str| WorkspaceError::NotFound {
            what: "ref",
            name: name.to_string(),
            place: repo_url.to_string(),
        };
        let Some(reference) = reference.filter(|r| !r.trim().is_empty()) else {
            let branch = repo::current_branch(&mirror)?.ok_or_else(|| not_found("HEAD"))?;
            let commit = repo::branch_commit(&mirror, &branch).map_err(|_| not_found("HEAD"))?;
            return Ok((branch, commit.id().to_string()));
        };
        if let Ok(commit) = repo::branch_commit(&mirror, reference) {
            return Ok((reference.to_string(), commit.id().to_string()));
        }
        let commit = mirror
            .revparse_single(reference)
            .and_then(|object| object.peel_to_commit())
            .map_err(|_| not_found(reference))?;
        let name = reference.strip_prefix("refs/heads/").unwrap_or(reference);
        Ok((name.to_string(), commit.id().to_string()))
    }

    /// Whether `name` is a branch of the mirror of `repo_url`.
    pub fn is_branch(&self, repo_url: &str, name: &str) -> bool {
        self.open(repo_url)
            .is_ok_and(|mirror| repo::branch_exists(&mirror, name))
    }

    /// The branches of the mirror of `repo_url` (the remote's, as of its last fetch) whose
    /// names start with `prefix`.
    pub fn branches_starting_with(&self, repo_url: &str, prefix: &str) -> Result<Vec<String>> {
        let mirror = self.open(repo_url)?;
        let what = || format!("cannot list the branches of the mirror of {repo_url}");
        let mut names = Vec::new();
        for branch in mirror
            .branches(Some(git2::BranchType::Local))
            .context(what)?
        {
            let (branch, _) = branch.context(what)?;
            if let Some(name) = branch
                .name()
                .context(what)?
                .filter(|n| n.starts_with(prefix))
            {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    /// The content of the file `path` at commit `sha` in the mirror of `repo_url`; `None` when
    /// the commit has no file there.
    pub fn read_file(&self, repo_url: &str, sha: &str, path: &str) -> Result<Option<Vec<u8>>> {
        let key = (repo_url.to_string(), sha.to_string(), path.to_string());
        let kept = |m: &Self| {
            m.read
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                .cloned()
        };
        if let Some(found) = kept(self) {
            return Ok(found);
        }
        let found = self.read_file_at(repo_url, sha, path)?;
        if sha.len() == 40 {
            let mut read = self.read.lock().unwrap_or_else(|e| e.into_inner());
            if read.len() >= READ_CAP {
                read.clear();
            }
            read.insert(key, found.clone());
        }
        Ok(found)
    }

    /// [`Self::read_file`] from the repository.
    fn read_file_at(&self, repo_url: &str, sha: &str, path: &str) -> Result<Option<Vec<u8>>> {
        let mirror = self.open(repo_url)?;
        let commit = Oid::from_str(sha)
            .and_then(|oid| mirror.find_commit(oid))
            .map_err(|_| WorkspaceError::NotFound {
                what: "commit",
                name: sha.to_string(),
                place: repo_url.to_string(),
            })?;
        let tree = commit
            .tree()
            .context(|| format!("cannot read the tree of {sha}"))?;
        let Ok(entry) = tree.get_path(std::path::Path::new(path.trim_start_matches('/'))) else {
            return Ok(None);
        };
        let object = entry
            .to_object(&mirror)
            .context(|| format!("cannot read {path} at {sha}"))?;
        Ok(object.as_blob().map(|blob| blob.content().to_vec()))
    }

    pub(super) fn open(&self, repo_url: &str) -> Result<Repository> {
        let path = self.path_of(repo_url);
        if !path.exists() {
            return Err(WorkspaceError::NoMirror {
                url: repo_url.to_string(),
            });
        }
        repo::open(&path)
    }
}
