//! The controller's cache of bare mirrors of git-run repositories (ARCHITECTURE "Workspaces"):
//! fetching, resolving the run's ref to a commit and reading the spec, plan and `.loop/config`
//! at that commit (kept: a commit's files never change). Used by the controller when a git run
//! is submitted and when a step's prompt is built.

use super::error::{Context, WorkspaceError};
use super::{repo, Result};
use git2::{Direction, FetchOptions, FetchPrune, Oid, Repository};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Bare mirrors of remote repositories, one directory per URL under `root`.
#[derive(Debug, Clone)]
pub struct Mirrors {
    root: PathBuf,
    /// Files read at full commit ids, which never change: every queued step's prompt reads
    /// the same few files of its run's commit.
    read: Arc<Mutex<HashMap<FileAt, Option<Vec<u8>>>>>,
}

/// A file of a repository at a commit: (url, commit id, path).
type FileAt = (String, String, String);

/// Most files [`Mirrors::read_file`] keeps.
const READ_CAP: usize = 1024;

impl Mirrors {
    /// Mirrors kept under `root` (created on the first fetch).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Mirrors {
            root: root.into(),
            read: Arc::default(),
        }
    }

    /// The directory of the mirror of `repo_url`: a hash of the URL, so any URL is a safe name.
    pub fn path_of(&self, repo_url: &str) -> PathBuf {
        let digest = Sha256::digest(repo_url.as_bytes());
        self.root
            .join(format!("{}.git", &hex::encode(digest)[..32]))
    }

    /// Creates the mirror of `repo_url` if needed and brings every branch up to date
    /// (`+refs/heads/*:refs/heads/*`, deleted branches pruned); the mirror's HEAD follows the
    /// remote's HEAD branch.
    pub fn fetch(&self, repo_url: &str) -> Result<()> {
        let mirror = self.open_or_init(repo_url)?;
        let fetch_error = |source| WorkspaceError::Fetch {
            url: repo_url.to_string(),
            source,
        };
        let mut remote = mirror.remote_anonymous(repo_url).map_err(fetch_error)?;
        remote.connect(Direction::Fetch).map_err(fetch_error)?;
        let remote_head = remote
            .default_branch()
            .ok()
            .and_then(|name| name.as_str().ok().map(str::to_string));
        let mut options = FetchOptions::new();
        options.prune(FetchPrune::On);
        remote
            .fetch(&["+refs/heads/*:refs/heads/*"], Some(&mut options), None)
            .map_err(fetch_error)?;
        if let Some(head) = remote_head.filter(|h| h.starts_with("refs/heads/")) {
            mirror
                .set_head(&head)
                .context(|| format!("cannot point the mirror's HEAD at {head}"))?;
        }
        Ok(())
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

    fn open(&self, repo_url: &str) -> Result<Repository> {
        let path = self.path_of(repo_url);
        if !path.exists() {
            return Err(WorkspaceError::NoMirror {
                url: repo_url.to_string(),
            });
        }
        repo::open(&path)
    }

    /// Opens the mirror, creating it first. A new mirror is initialised beside its final name
    /// and renamed into place, so a concurrent fetch never sees a half-made repository.
    fn open_or_init(&self, repo_url: &str) -> Result<Repository> {
        let path = self.path_of(repo_url);
        if !path.exists() {
            fs::create_dir_all(&self.root)
                .context(|| format!("cannot create {}", self.root.display()))?;
            let staging = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4()));
            Repository::init_bare(&staging)
                .context(|| format!("cannot create a mirror at {}", staging.display()))?;
            if fs::rename(&staging, &path).is_err() {
                // Someone else created it meanwhile: use theirs.
                let _ = fs::remove_dir_all(&staging);
            }
        }
        repo::open(&path)
    }
}
