//! The copy of one stored artifact into the run's log directories (see
//! `artifacts::run_logs`): reads the run for its workspace and config, then writes on the
//! blocking pool. Shared by the lease owner (the files steps upload) and the scheduler's
//! finisher (`report.tsv`, `summary.json`, `review-diff.json`, rewritten prompts).

use crate::artifacts::run_logs::RunLogs;
use crate::db::{self, Db};

/// Copies `bytes`, stored as artifact `name` of run `run_id`, where `logs` says; best effort.
pub async fn copy_to_run_logs(
    db: &Db,
    logs: &RunLogs,
    run_id: &str,
    name: &str,
    bytes: bytes::Bytes,
) {
    if !logs.enabled() {
        return;
    }
    let id = run_id.to_string();
    let run = match db.run(move |c| db::runs::get(c, &id)).await {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(run_id, error = %e, "cannot read the run for its log copy");
            return;
        }
    };
    let dirs = logs.dirs(&run.workspace_root, &run.id, &run.config());
    let name = name.to_string();
    let _ = tokio::task::spawn_blocking(move || RunLogs::write(&dirs, &name, &bytes)).await;
}
