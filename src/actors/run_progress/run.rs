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

    /// The branch a git run works on: the one decided when it was submitted (`run_branch`),
    /// else (a row stored before that was kept) the one its name gives.
    pub fn git_run_branch(&self, config: &RunConfig) -> String {
        if let Some(b) = self.run_branch.as_deref().filter(|b| !b.is_empty()) {
            return b.to_string();
        }
        if let Some(w) = self.worktree() {
            return w.run_branch;
        }
        self.named_git_branch(config)
    }

    /// The branch a git run's name gives: `<run_branch_prefix><slug(name)>`, and when the run
    /// is named after its spec (the default name, which every run of that spec gets)
    /// `-<the last 8 characters of the run id>` appended, so that runs of one spec started at
    /// once push branches of their own (slug `run` when the name has none). The run works on
    /// it, or on it with `-2`, `-3`, … appended when the remote had it already.
    pub fn named_git_branch(&self, config: &RunConfig) -> String {
        let name = slug(&self.name);
        let spec = Path::new(&self.spec_path)
            .file_stem()
            .map(|s| slug(&s.to_string_lossy()))
            .unwrap_or_default();
        let prefix = &config.run_branch_prefix;
        match name.as_str() {
            "" => format!("{prefix}run-{}", id_tail(&self.id)),
            n if n == spec => format!("{prefix}{n}-{}", id_tail(&self.id)),
            n => format!("{prefix}{n}"),
        }
    }
}

/// The last 8 alphanumerics of a run id: for the UUIDv7 ids of loopd, its random part (the
/// first characters are the creation time, shared by runs made in the same minute).
pub fn id_tail(id: &str) -> String {
    let alnum: Vec<char> = id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    alnum[alnum.len().saturating_sub(8)..].iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git_run(id: &str, name: &str) -> RunRow {
        RunRow {
            id: id.into(),
            name: name.into(),
            name_source: "spec_slug".into(),
            status: crate::domain::RunStatus::Pending.as_str().into(),
            workspace_root: "demo".into(),
            spec_path: "specs/demo.md".into(),
            plan_path: None,
            worktree_json: None,
            worktree_cleanup_status: None,
            worktree_cleaned_at: None,
            config_json: None,
            created_at: 0,
            updated_at: 0,
            review_status: "pending".into(),
            review_action_at: None,
            pr_url: None,
            merge_commit: None,
            workspace_source: WorkspaceSource::Git.as_str().into(),
            repo_url: Some("file:///srv/demo.git".into()),
            repo_ref: None,
            artifact_store: "s3".into(),
            labels: String::new(),
            waiting_reason: None,
            failure_reason: None,
            started_at: None,
            ended_at: None,
            pushed_branch: None,
            pushed_commit: None,
            run_branch: None,
        }
    }

    #[test]
    fn a_git_run_named_after_its_spec_has_the_random_tail_of_its_id_in_its_branch() {
        let config = RunConfig::default();
        let a = git_run("01938f2a-7c41-7d2e-9a1b-4c5d6e7f8a9b", "demo");
        let b = git_run("01938f2a-7c41-7d2e-8f00-112233445566", "demo");
        assert_eq!(a.git_run_branch(&config), "run/demo-6e7f8a9b");
        assert_eq!(b.git_run_branch(&config), "run/demo-33445566");
        assert_eq!(git_run("r1", "+++").git_run_branch(&config), "run/run-r1");
    }

    #[test]
    fn a_git_run_given_another_name_keeps_its_branch_name() {
        let config = RunConfig::default();
        let a = git_run("01938f2a-7c41-7d2e-9a1b-4c5d6e7f8a9b", "Feature X");
        assert_eq!(a.git_run_branch(&config), "run/feature-x");
    }

    #[test]
    fn a_git_run_works_on_the_branch_decided_at_its_submission() {
        let config = RunConfig::default();
        let mut a = git_run("01938f2a-7c41-7d2e-9a1b-4c5d6e7f8a9b", "Feature X");
        a.run_branch = Some("run/feature-x-2".into());
        assert_eq!(a.git_run_branch(&config), "run/feature-x-2");
        assert_eq!(a.named_git_branch(&config), "run/feature-x");
    }
}
