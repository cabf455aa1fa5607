//! Everything git: run worktrees and merges for shared_fs runs, the controller's bare mirrors
//! for git runs (and the push of a finished run's branch), and the worker's clone, checkpoint
//! commits and bundles for git runs. Repositories are read and written in-process with `git2`;
//! only the network operations (clone, fetch, push) run the `git` program, in `remote/`.
//! Every function is blocking: async callers put them on `spawn_blocking`.

pub mod bundle;
pub mod clone;
pub mod diff;
mod error;
pub mod exclude;
pub mod merge;
pub mod mirror;
pub mod mirror_review;
pub mod naming;
pub mod remote;
mod repo;
pub mod worktree;

#[cfg(test)]
mod tests;

pub use bundle::{import_bundle, write_bundle};
pub use clone::{checkpoint_commit, prepare_clone, Source};
pub use diff::{commits_diff, run_diff};
pub use error::WorkspaceError;
pub use exclude::exclude_log_dir;
pub use merge::merge_run_branch;
pub use mirror::Mirrors;
pub use mirror_review::{run_ref, GitRunHead};
pub use naming::{expand_path_template, slug, DEFAULT_PATH_TEMPLATE};
pub use remote::{Cause, RemoteError, Remotes};
pub use worktree::{
    create_worktree, delete_branch, detect_base_branch, is_clean, list_worktrees, plan_worktree,
    remove_listed_worktree, remove_worktree, Listed,
};

/// Result of every workspace operation.
pub type Result<T, E = WorkspaceError> = std::result::Result<T, E>;
