//! What a run's row says beyond its columns, as methods on [`RunRow`]: its effective config
//! and worktree (stored as JSON), the branch a git run works on, and where the run's files
//! are from the point of view of a step ([`RunPaths`]: the worktree for shared_fs runs, paths
//! relative to the clone for git runs). Read by the scheduler, the lease owner (assignments)
//! and the HTTP views; pure, no I/O.

use crate::api::RunWorktree;
use crate::db::models::RunRow;
use crate::domain::run_config::RunConfig;
use crate::domain::WorkspaceSource;
use crate::workspace::naming::slug;
use std::path::Path;

/// Where a run's files are, as the agent sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunPaths {
    /// The directory the step works in ("" = the worker's clone of a git run).
    pub workdir: String,
    pub spec: String,
    pub plan: Option<String>,
    pub runner_notes: String,
}

/// The runner-notes file of a git run, relative to the clone (excluded from commits).
pub const GIT_RUNNER_NOTES: &str = ".loop/runner-notes.txt";

/// Re-roots `path` from the primary checkout into the worktree.
fn remap(path: &str, root: &str, worktree: &str) -> String {
    let p = Path::new(path);
    let rel = if p.is_absolute() {
        match p.strip_prefix(root) {
            Ok(r) => r,
            Err(_) => return path.to_string(),
        }
    } else {
        p
    };
    Path::new(worktree).join(rel).to_string_lossy().to_string()
}

impl RunRow {
    /// The run's parsed effective config (the defaults when it cannot be read).
    pub fn config(&self) -> RunConfig {
        self.config_json
            .as_deref()
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_default()
    }

    /// The run's worktree, when it has one.
    pub fn worktree(&self) -> Option<RunWorktree> {
        self.worktree_json
            .as_deref()
            .and_then(|j| serde_json::from_str(j).ok())
    }

    /// When the kept worktree of this ended run is due for removal (`worktree_keep_days` after
    /// it ended); `None`: kept for ever.
    pub fn worktree_remove_after(&self) -> Option<i64> {
        let keep = self.config().worktree_keep_ms()?;
        Some(
            self.ended_at
                .unwrap_or(self.updated_at)
                .saturating_add(keep),
        )
    }

    /// The step-side paths of a run.
    pub fn paths(&self) -> RunPaths {
        if self.workspace_source == WorkspaceSource::Git.as_str() {
            return RunPaths {
                workdir: String::new(),
                spec: self.spec_path.clone(),
                plan: self.plan_path.clone(),
                runner_notes: GIT_RUNNER_NOTES.to_string(),
            };
        }
        let root = self.workspace_root.as_str();
        let wt = self
            .worktree()
            .map(|w| w.worktree_path)
            .unwrap_or_else(|| root.to_string());
        RunPaths {
            spec: remap(&self.spec_path, root, &wt),
            plan: self.plan_path.as_deref().map(|p| remap(p, root, &wt)),
            runner_notes: self
                .config()
                .run_log_dir(root, &self.id)
                .join("runner-notes.txt")
                .to_string_lossy()
                .to_string(),
            workdir: wt,
        }
    }

    /// The branch a git run works on.
    pub fn git_run_branch(&self, config: &RunConfig) -> String {
        match self.worktree() {
            Some(w) => w.run_branch,
            None => format!("{}{}", config.run_branch_prefix, slug(&self.name)),
        }
    }
}
