//! `worktree_keep_days`: the worktree of an ended run that nobody reviewed (or that
//! `worktree_cleanup=false` kept) is removed once the run has been over that long; the branch
//! stays. Called from the scheduler's tick, held by one controller at a time.

use super::error::SchedError;
use crate::db::{self, Db};
use crate::workspace::worktree as wt;
use std::path::Path;

/// The cleanup status of a worktree removed because its run ended long enough ago.
pub const EXPIRED: &str = "expired";

/// Removes the kept worktrees that are due at `now`; how many it removed.
pub(super) async fn expire_worktrees(db: &Db, now: i64) -> Result<usize, SchedError> {
    let rows = db.run(db::runs::with_kept_worktree).await?;
    let mut removed = 0;
    for run in rows {
        let (Some(due), Some(w)) = (run.worktree_remove_after(), run.worktree()) else {
            continue;
        };
        if due > now {
            continue;
        }
        let root = run.workspace_root.clone();
        let r = tokio::task::spawn_blocking(move || wt::remove_worktree(Path::new(&root), &w))
            .await
            .map_err(|e| SchedError::Internal(e.to_string()))?;
        let status = match &r {
            Ok(()) => EXPIRED,
            Err(e) => {
                if run.worktree_cleanup_status.as_deref() != Some("failed") {
                    tracing::warn!(run_id = %run.id, error = %e, "cannot remove an expired worktree");
                }
                "failed"
            }
        };
        let (id, was) = (run.id.clone(), run.worktree_cleanup_status.clone());
        db.tx(move |c| {
            let mut row = db::runs::lock(c, &id)?;
            // Someone else acted on it meanwhile (a retry, a scrap, a reset): leave it.
            if row.worktree_cleanup_status != was || row.status != run.status {
                return Ok(());
            }
            row.worktree_cleanup_status = Some(status.to_string());
            row.worktree_cleaned_at = (status == EXPIRED).then_some(now);
            db::runs::save(c, &row)
        })
        .await?;
        if r.is_ok() {
            tracing::info!(run_id = %run.id, "expired worktree removed");
            removed += 1;
        }
    }
    Ok(removed)
}
