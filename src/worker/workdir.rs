//! The worker side of workspaces: resolves where a step runs (the shared path, or a clone of
//! the repository restored from the run's newest checkpoint bundle), makes the checkpoint
//! commit and bundle after a git step, and removes the step's directory. A clone's directory
//! carries the time a step last used it; clones unused for `worker.clone_keep_hours` go at
//! start and at every `worker.clone_sweep_interval_ms`, except those of the runs the worker
//! has steps of. Called by the step executor (`step.rs`) and the runner (the sweep).

use super::plane_retry::retry_transient;
use super::state::{Active, Shared};
use crate::api::{Assignment, Checkpoint, WorkspaceSpec};
use crate::workspace::{bundle, clone, WorkspaceError};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Where a step runs.
pub struct Prepared {
    pub dir: PathBuf,
    /// Git runs: the run branch, the commit the step started from, and the base every clone has.
    pub git: Option<GitState>,
}

pub struct GitState {
    pub run_branch: String,
    pub head_before: String,
    pub base: String,
}

/// A checkpoint ready to upload.
pub struct CheckpointFile {
    pub name: String,
    pub path: PathBuf,
    pub head: String,
}

/// The artifact name of a step's checkpoint. Each step's bundle has its own name, so a bundle
/// uploaded by an attempt whose completion is then refused never replaces the recorded one.
pub fn bundle_name(step_id: &str) -> String {
    format!("checkpoints/{step_id}.bundle")
}

/// Why a step's workspace could not be prepared; `infra` when the artifact store or this
/// worker is to blame rather than the run's settings (a path or repository it cannot reach).
#[derive(Debug)]
pub struct PrepareError {
    pub reason: String,
    pub infra: bool,
}

fn infra(reason: String) -> PrepareError {
    PrepareError {
        reason,
        infra: true,
    }
}

fn blocking_err(e: tokio::task::JoinError) -> PrepareError {
    infra(format!("worker task failed: {e}"))
}

/// Resolves the step's workspace; a failure is the step's failure, with a clear reason.
pub async fn prepare(
    shared: &Shared,
    a: &Assignment,
    active: &Active,
) -> Result<Prepared, PrepareError> {
    match &a.workspace {
        WorkspaceSpec::SharedFs { path } => {
            let p = PathBuf::from(path);
            if !p.is_dir() {
                return Err(PrepareError {
                    reason: format!("workspace path missing on this worker: {path}"),
                    infra: false,
                });
            }
            Ok(Prepared { dir: p, git: None })
        }
        WorkspaceSpec::Git {
            repo_url,
            repo_ref,
            run_branch,
            checkpoint,
            credential,
        } => {
            let dir = shared.cfg.work_dir.join("clones").join(&a.run_id);
            let bundle_path = match checkpoint {
                Some(cp) => Some((
                    fetch_checkpoint(shared, a, active, cp).await?,
                    cp.head.clone(),
                )),
                None => None,
            };
            // No sweep removes clones while this one is prepared (and marked used).
            let _preparing = shared.clones.read().await;
            let (d, url, r, b) = (
                dir.clone(),
                repo_url.clone(),
                repo_ref.clone(),
                run_branch.clone(),
            );
            let (remotes, handed) = (shared.cfg.remotes.clone(), credential.clone());
            let head = tokio::task::spawn_blocking(move || {
                let cp = bundle_path.as_ref().map(|(p, h)| (p.as_path(), h.as_str()));
                let source = clone::Source {
                    url: &url,
                    remotes: &remotes,
                    credential: handed.as_ref(),
                };
                let head = clone::prepare_clone(&d, source, &r, &b, cp);
                if head.is_ok() {
                    mark_used(&d);
                }
                head
            })
            .await
            .map_err(blocking_err)?
            .map_err(|e| PrepareError {
                reason: format!("cannot prepare the clone: {e}"),
                // The network failed (after `git.network_attempts`): not the run's fault. A
                // refused credential or host key, a missing repository or ref are the run's
                // or the settings' and would fail again.
                infra: matches!(&e, WorkspaceError::Remote(r) if r.retryable()),
            })?;
            Ok(Prepared {
                dir,
                git: Some(GitState {
                    run_branch: run_branch.clone(),
                    head_before: head,
                    base: repo_ref.clone(),
                }),
            })
        }
    }
}

/// Downloads the run's checkpoint bundle into the step's directory.
async fn fetch_checkpoint(
    shared: &Shared,
    a: &Assignment,
    active: &Active,
    cp: &Checkpoint,
) -> Result<PathBuf, PrepareError> {
    let get = || shared.plane.get_artifact(&a.step_id, a.epoch, &cp.name);
    let bytes = retry_transient(active, &cp.name, get)
        .await
        .map_err(|e| infra(format!("cannot fetch checkpoint {}: {e}", cp.name)))?;
    let path = shared
        .cfg
        .work_dir
        .join("steps")
        .join(&a.step_id)
        .join("checkpoint.bundle");
    let p2 = path.clone();
    tokio::task::spawn_blocking(move || std::fs::write(&p2, &bytes))
        .await
        .map_err(blocking_err)?
        .map_err(|e| infra(format!("cannot write checkpoint: {e}")))?;
    Ok(path)
}

/// Commits what the agent left uncommitted and bundles the run branch, when it moved.
pub async fn checkpoint(
    shared: &Shared,
    a: &Assignment,
    ws: &Prepared,
) -> Result<Option<CheckpointFile>, String> {
    let Some(g) = ws.git.as_ref() else {
        return Ok(None);
    };
    let out = shared
        .cfg
        .work_dir
        .join("steps")
        .join(&a.step_id)
        .join("checkpoint-out.bundle");
    let (dir, branch, base, before) = (
        ws.dir.clone(),
        g.run_branch.clone(),
        g.base.clone(),
        g.head_before.clone(),
    );
    let msg = format!(
        "loopd checkpoint: {} {} step {}",
        a.run_name, a.phase, a.attempt
    );
    let out2 = out.clone();
    let made = tokio::task::spawn_blocking(move || -> Result<Option<String>, String> {
        let head = clone::checkpoint_commit(&dir, &msg).map_err(|e| e.to_string())?;
        if head == before {
            return Ok(None);
        }
        bundle::write_bundle(&dir, &branch, Some(&base), &out2).map_err(|e| e.to_string())?;
        Ok(Some(head))
    })
    .await
    .map_err(|e| format!("checkpoint task failed: {e}"))?;
    match made {
        Ok(head) => Ok(head.map(|head| CheckpointFile {
            name: bundle_name(&a.step_id),
            path: out,
            head,
        })),
        Err(e) => {
            tracing::error!(error = %e, "checkpoint failed");
            Err(e)
        }
    }
}

/// Removes a step's directory once its results are sent (or discarded).
pub async fn remove_step_dir(work_dir: &Path, step_id: &str) {
    let d = work_dir.join("steps").join(step_id);
    let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(d)).await;
    if let Ok(Err(e)) = removed {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(error = %e, "cannot remove the step directory");
        }
    }
}

/// Notes that a step uses the clone `dir` now (its directory's modification time).
fn mark_used(dir: &Path) {
    let marked = std::fs::File::open(dir).and_then(|f| f.set_modified(SystemTime::now()));
    if let Err(e) = marked {
        tracing::warn!(error = %e, dir = %dir.display(), "cannot mark the clone as used");
    }
}

/// Removes the clones (`<work_dir>/clones/<run_id>`) that no step has used for longer than
/// `keep`, except those of the runs in `busy` (a clone removed under a running step would pull
/// its workspace away; see [`sweep_clones`]); returns how many.
pub fn remove_idle_clones(work_dir: &Path, keep: Duration, busy: &HashSet<String>) -> usize {
    let Ok(entries) = std::fs::read_dir(work_dir.join("clones")) else {
        return 0;
    };
    let now = SystemTime::now();
    let mut removed = 0;
    for e in entries.flatten() {
        if busy.contains(e.file_name().to_string_lossy().as_ref()) {
            continue;
        }
        let last_used = e.metadata().and_then(|m| m.modified()).ok();
        let idle = last_used.and_then(|t| now.duration_since(t).ok());
        if idle.is_none_or(|d| d <= keep) {
            continue;
        }
        match std::fs::remove_dir_all(e.path()) {
            Ok(()) => removed += 1,
            Err(err) => {
                tracing::warn!(error = %err, dir = %e.path().display(), "cannot remove an unused clone")
            }
        }
    }
    if removed > 0 {
        tracing::info!(
            removed,
            keep_hours = keep.as_secs() / 3600,
            "removed unused clones"
        );
    }
    removed
}

/// From the worker's start, then every `clone_sweep_every` (if set): removes the clones
/// unused for `clone_keep` but those of the runs it has steps of, on the blocking pool (it may
/// delete whole repositories). A sweep holds the write guard of `Shared::clones` and reads the
/// steps under it; a step is registered before it prepares its clone under the read guard, so
/// a step is either counted by the sweep or prepares after it (cloning again from the run's
/// checkpoint if its clone went), never under it.
pub async fn sweep_clones(shared: Arc<Shared>) {
    let Some(keep) = shared.cfg.clone_keep else {
        return;
    };
    loop {
        {
            let _sweeping = shared.clones.write().await;
            let busy = shared.active_runs();
            let dir = shared.cfg.work_dir.clone();
            let removing = move || remove_idle_clones(&dir, keep, &busy);
            if let Err(e) = tokio::task::spawn_blocking(removing).await {
                tracing::warn!(error = %e, "removing unused clones failed");
            }
        }
        let Some(every) = shared.cfg.clone_sweep_every else {
            return;
        };
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shared.stop_claims.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{mark_used, remove_idle_clones};
    use std::collections::HashSet;
    use std::time::{Duration, SystemTime};

    const DAY: Duration = Duration::from_secs(86_400);

    fn aged(dir: &std::path::Path, age: Duration) {
        std::fs::create_dir_all(dir.join(".git")).unwrap();
        std::fs::write(dir.join("README"), "x").unwrap();
        let f = std::fs::File::open(dir).unwrap();
        f.set_modified(SystemTime::now() - age).unwrap();
    }

    #[test]
    fn clones_unused_for_longer_than_kept_are_removed_and_used_ones_stay() {
        let work = tempfile::tempdir().unwrap();
        let clones = work.path().join("clones");
        aged(&clones.join("old"), 10 * DAY);
        aged(&clones.join("recent"), DAY);
        aged(&clones.join("old_but_used_again"), 10 * DAY);
        mark_used(&clones.join("old_but_used_again"));
        std::fs::create_dir_all(work.path().join("steps/s1")).unwrap();

        assert_eq!(remove_idle_clones(work.path(), 7 * DAY, &HashSet::new()), 1);
        assert!(!clones.join("old").exists(), "unused for 10 days, kept 7");
        assert!(clones.join("recent").join("README").exists());
        assert!(clones.join("old_but_used_again").join(".git").exists());
        assert!(work.path().join("steps/s1").exists(), "only clones");
        assert_eq!(
            remove_idle_clones(work.path(), 7 * DAY, &HashSet::new()),
            0,
            "nothing left to remove"
        );
    }

    #[test]
    fn the_clones_of_runs_with_steps_here_stay_however_old() {
        let work = tempfile::tempdir().unwrap();
        let clones = work.path().join("clones");
        aged(&clones.join("run-busy"), 10 * DAY);
        aged(&clones.join("run-idle"), 10 * DAY);
        let busy = HashSet::from(["run-busy".to_string()]);
        assert_eq!(remove_idle_clones(work.path(), 7 * DAY, &busy), 1);
        assert!(clones.join("run-busy").join(".git").exists());
        assert!(!clones.join("run-idle").exists());
    }

    #[test]
    fn a_worker_without_clones_removes_nothing() {
        let work = tempfile::tempdir().unwrap();
        assert_eq!(remove_idle_clones(work.path(), DAY, &HashSet::new()), 0);
    }
}
