//! The one error type of the workspace module, and the helpers that attach context to the
//! errors of git2 and the file system. Used by every file of `workspace`.

use std::path::PathBuf;

/// What went wrong in a workspace operation. Messages name the repository, ref or path.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// The repository could not be opened.
    #[error("cannot open repository {path}: {source}")]
    Open { path: PathBuf, source: git2::Error },
    /// A network operation on a remote failed (host and cause class, never git's raw words).
    #[error(transparent)]
    Remote(#[from] super::remote::RemoteError),
    /// A branch, ref or commit does not exist where it was looked up.
    #[error("{what} not found in {place}: {name}")]
    NotFound {
        what: &'static str,
        name: String,
        place: String,
    },
    /// The spec file is missing at the run's ref (for callers that read specs from a mirror).
    #[error("spec not found at {reference}: {path}")]
    SpecNotFound { reference: String, path: String },
    /// There is no mirror of `url` yet.
    #[error("no mirror of {url} yet: fetch it first")]
    NoMirror { url: String },
    /// Merging the run branch conflicts; nothing was changed.
    #[error("merge conflict merging {run_branch} into {target} in {}", paths.join(", "))]
    Conflict {
        run_branch: String,
        target: String,
        paths: Vec<String>,
    },
    /// The merge target is checked out in a working tree that has uncommitted changes.
    #[error("dirty working tree: {branch} is checked out at {path} with uncommitted changes")]
    DirtyCheckout { branch: String, path: PathBuf },
    /// A path that is not a linked worktree of the repository (the primary checkout is not).
    #[error("{path} is not a linked worktree of {repo}")]
    NotAWorktree { path: PathBuf, repo: PathBuf },
    /// A worktree with uncommitted changes, removed only when forced.
    #[error("worktree {path} has uncommitted changes (force to remove it anyway)")]
    DirtyWorktree { path: PathBuf },
    /// The worktree is not on the branch it should be on.
    #[error("worktree {path} is on {actual}, expected {expected}")]
    WrongBranch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    /// A bundle file is malformed or does not fit the repository.
    #[error("invalid bundle {path}: {reason}")]
    InvalidBundle { path: PathBuf, reason: String },
    /// A bundle needs a commit the repository does not have.
    #[error("bundle {path} needs commit {sha}, which {repo} does not have")]
    MissingPrerequisite {
        path: PathBuf,
        sha: String,
        repo: PathBuf,
    },
    /// Any other git failure, with what was being done.
    #[error("{context}: {source}")]
    Git {
        context: String,
        source: git2::Error,
    },
    /// A file-system failure, with what was being done.
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

/// Attaches "what was being done" to a git2 or io error.
pub(crate) trait Context<T> {
    fn context<F: FnOnce() -> String>(self, what: F) -> Result<T, WorkspaceError>;
}

impl<T> Context<T> for Result<T, git2::Error> {
    fn context<F: FnOnce() -> String>(self, what: F) -> Result<T, WorkspaceError> {
        self.map_err(|source| WorkspaceError::Git {
            context: what(),
            source,
        })
    }
}

impl<T> Context<T> for Result<T, std::io::Error> {
    fn context<F: FnOnce() -> String>(self, what: F) -> Result<T, WorkspaceError> {
        self.map_err(|source| WorkspaceError::Io {
            context: what(),
            source,
        })
    }
}
