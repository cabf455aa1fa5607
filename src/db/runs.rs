//! Queries on `runs`.

use super::models::{RunRow, RunStateRow};
use super::schema::{run_state, runs};
use super::{on_conn, Conn, DbError};
use crate::domain::{RunStatus, WorkspaceSource};
use diesel::prelude::*;

pub fn insert(conn: &mut Conn, row: &RunRow) -> Result<(), DbError> {
    on_conn!(conn, |c| diesel::insert_into(runs::table)
        .values(row)
        .execute(c))?;
    Ok(())
}

pub fn get(conn: &mut Conn, id: &str) -> Result<Option<RunRow>, DbError> {
    let r = on_conn!(conn, |c| runs::table
        .find(id)
        .select(RunRow::as_select())
        .get_result(c)
        .optional())?;
    Ok(r)
}

/// Fetches a run that must exist.
pub fn require(conn: &mut Conn, id: &str) -> Result<RunRow, DbError> {
    get(conn, id)?.ok_or(DbError::NotFound)
}

/// Reads a run and locks its row until the transaction ends (Postgres; SQLite's write
/// transaction already excludes other writers). Serialises the decisions about one run.
pub fn lock(conn: &mut Conn, id: &str) -> Result<RunRow, DbError> {
    let r = match conn {
        Conn::Pg(c) => runs::table
            .find(id)
            .select(RunRow::as_select())
            .for_update()
            .get_result(&mut **c)
            .optional()?,
        Conn::Sqlite(_) => return require(conn, id),
    };
    r.ok_or(DbError::NotFound)
}

/// [`lock`], with the run's scheduler state read (and locked) in the same statement.
pub fn lock_with_state(conn: &mut Conn, id: &str) -> Result<(RunRow, RunStateRow), DbError> {
    macro_rules! both {
        () => {
            runs::table
                .inner_join(run_state::table)
                .filter(runs::id.eq(id))
                .select((RunRow::as_select(), RunStateRow::as_select()))
        };
    }
    let r = match conn {
        Conn::Pg(c) => both!().for_update().get_result(&mut **c).optional()?,
        Conn::Sqlite(c) => both!().get_result(&mut **c).optional()?,
    };
    r.ok_or(DbError::NotFound)
}

/// Newest first, optionally filtered.
pub fn list(
    conn: &mut Conn,
    workspace_root: Option<&str>,
    status: Option<&str>,
) -> Result<Vec<RunRow>, DbError> {
    let rows = on_conn!(conn, |c| {
        let mut q = runs::table.select(RunRow::as_select()).into_boxed();
        if let Some(ws) = workspace_root {
            q = q.filter(runs::workspace_root.eq(ws.to_string()));
        }
        if let Some(st) = status {
            q = q.filter(runs::status.eq(st.to_string()));
        }
        q.order((runs::created_at.desc(), runs::id.desc())).load(c)
    })?;
    Ok(rows)
}

/// Runs in one status, oldest first.
pub fn with_status(conn: &mut Conn, status: RunStatus) -> Result<Vec<RunRow>, DbError> {
    let rows = on_conn!(conn, |c| runs::table
        .filter(runs::status.eq(status.as_str()))
        .select(RunRow::as_select())
        .order((runs::created_at.asc(), runs::id.asc()))
        .load(c))?;
    Ok(rows)
}

/// Writes every column of the row back.
pub fn save(conn: &mut Conn, row: &RunRow) -> Result<(), DbError> {
    let n = on_conn!(conn, |c| diesel::update(runs::table.find(&row.id))
        .set(row)
        .execute(c))?;
    if n == 0 {
        return Err(DbError::NotFound);
    }
    Ok(())
}

/// Counts runs per status (for metrics).
pub fn count_by_status(conn: &mut Conn) -> Result<Vec<(String, i64)>, DbError> {
    let rows = on_conn!(conn, |c| runs::table
        .group_by(runs::status)
        .select((runs::status, diesel::dsl::count_star()))
        .load::<(String, i64)>(c))?;
    Ok(rows)
}

/// Sets `waiting_reason` when it differs from `current`, what the caller read (no write per
/// tick).
pub fn set_waiting_reason(
    conn: &mut Conn,
    id: &str,
    current: Option<&str>,
    reason: Option<&str>,
) -> Result<(), DbError> {
    if current != reason {
        on_conn!(conn, |c| diesel::update(runs::table.find(id))
            .set(runs::waiting_reason.eq(reason))
            .execute(c))?;
    }
    Ok(())
}

/// The id and `waiting_reason` of every run in `status`.
pub fn reasons_with_status(
    conn: &mut Conn,
    status: RunStatus,
) -> Result<Vec<(String, Option<String>)>, DbError> {
    let rows = on_conn!(conn, |c| runs::table
        .filter(runs::status.eq(status.as_str()))
        .select((runs::id, runs::waiting_reason))
        .load(c))?;
    Ok(rows)
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
}

/// RUNNING and PAUSED runs whose progress stopped between two transactions: a finish pending,
/// no step at all, or a last step finished but not yet settled (nothing decided after it). One
/// statement, whatever the number of runs.
pub fn stuck(conn: &mut Conn) -> Result<Vec<String>, DbError> {
    const Q: &str = "SELECT r.id AS id FROM runs r JOIN run_state x ON x.run_id = r.id \
        WHERE r.status IN ('RUNNING', 'PAUSED') \
          AND (x.finishing IS NOT NULL \
               OR NOT EXISTS (SELECT 1 FROM steps s \
                   WHERE s.run_id = r.id \
                     AND s.seq = (SELECT max(t.seq) FROM steps t WHERE t.run_id = r.id) \
                     AND (s.settled OR s.status NOT IN ('SUCCEEDED', 'FAILED', 'CANCELED')))) \
        ORDER BY r.created_at, r.id";
    let rows: Vec<Id> = on_conn!(conn, |c| diesel::sql_query(Q).load(c))?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

/// Takes the next event number of a run, locking its `run_state` row until commit: events of
/// one run are numbered in commit order, so a reader never skips one that commits late.
pub fn next_event_seq(conn: &mut Conn, id: &str) -> Result<i64, DbError> {
    let seq: Option<i64> = on_conn!(conn, |c| diesel::update(run_state::table.find(id))
        .set(run_state::event_seq.eq(run_state::event_seq + 1))
        .returning(run_state::event_seq)
        .get_result(c)
        .optional())?;
    seq.ok_or(DbError::NotFound)
}

/// Inserts a run together with its (zeroed) scheduler state.
pub fn insert_with_state(conn: &mut Conn, row: &RunRow) -> Result<(), DbError> {
    insert(conn, row)?;
    let state = RunStateRow {
        run_id: row.id.clone(),
        ..Default::default()
    };
    on_conn!(conn, |c| diesel::insert_into(run_state::table)
        .values(&state)
        .execute(c))?;
    Ok(())
}

/// The scheduler state of a run.
pub fn state(conn: &mut Conn, id: &str) -> Result<RunStateRow, DbError> {
    let r = on_conn!(conn, |c| run_state::table
        .find(id)
        .select(RunStateRow::as_select())
        .get_result(c)
        .optional())?;
    r.ok_or(DbError::NotFound)
}

/// Writes the scheduler state back and takes `n` event numbers in the same statement;
/// returns the last number taken (see `events::reserve`).
pub fn save_state_with_events(
    conn: &mut Conn,
    row: &RunStateRow,
    n: usize,
) -> Result<i64, DbError> {
    let n = n as i64;
    let last: Option<i64> = on_conn!(conn, |c| diesel::update(run_state::table.find(&row.run_id))
        .set((
            run_state::iterations_done.eq(row.iterations_done),
            run_state::verify_failures.eq(row.verify_failures),
            run_state::review_failures.eq(row.review_failures),
            run_state::watchdog_rewrites.eq(row.watchdog_rewrites),
            run_state::pending_prompt.eq(&row.pending_prompt),
            run_state::runner_notes.eq(&row.runner_notes),
            run_state::last_worker_id.eq(&row.last_worker_id),
            run_state::checkpoint_name.eq(&row.checkpoint_name),
            run_state::checkpoint_head.eq(&row.checkpoint_head),
            run_state::finishing.eq(&row.finishing),
            run_state::event_seq.eq(run_state::event_seq + n),
        ))
        .returning(run_state::event_seq)
        .get_result(c)
        .optional())?;
    last.ok_or(DbError::NotFound)
}

/// Writes the scheduler state back (`event_seq` is left alone: only events move it).
pub fn save_state(conn: &mut Conn, row: &RunStateRow) -> Result<(), DbError> {
    save_state_with_events(conn, row, 0).map(|_| ())
}

/// Cleanup statuses of a worktree that is still on disk for an ended run: kept for review
/// (`deferred`), kept by `worktree_cleanup=false` (`skipped`), or a removal that failed.
pub const KEPT_WORKTREE: &[&str] = &["deferred", "skipped", "failed"];

/// Ended runs that still have a worktree on disk (per their cleanup status), newest first.
pub fn with_kept_worktree(conn: &mut Conn) -> Result<Vec<RunRow>, DbError> {
    let ended = [
        RunStatus::Completed.as_str(),
        RunStatus::Failed.as_str(),
        RunStatus::Canceled.as_str(),
    ];
    let rows = on_conn!(conn, |c| runs::table
        .filter(runs::status.eq_any(ended))
        .filter(runs::worktree_json.is_not_null())
        .filter(
            runs::worktree_cleanup_status
                .is_null()
                .or(runs::worktree_cleanup_status.eq_any(KEPT_WORKTREE))
        )
        .select(RunRow::as_select())
        .order((runs::created_at.desc(), runs::id.desc()))
        .load(c))?;
    Ok(rows)
}

/// Postgres: makes the caller's transaction the only one starting runs until it ends (a
/// transaction-level advisory lock), so that controllers sharing the database never start
/// more runs than the caps allow. SQLite's write transactions are serial already.
pub fn serialize_starts(conn: &mut Conn) -> Result<(), DbError> {
    if let Conn::Pg(c) = conn {
        // "loopd" + 1: distinct from the duties' lock (`actors::peers`).
        diesel::sql_query("SELECT pg_advisory_xact_lock(465726042213)").execute(&mut **c)?;
    }
    Ok(())
}

/// Git runs not ended (PENDING, RUNNING or PAUSED), oldest first: the holders of run branches.
pub fn active_git_runs(conn: &mut Conn) -> Result<Vec<RunRow>, DbError> {
    let active = [RunStatus::Pending, RunStatus::Running, RunStatus::Paused].map(|s| s.as_str());
    let rows = on_conn!(conn, |c| runs::table
        .filter(runs::workspace_source.eq(WorkspaceSource::Git.as_str()))
        .filter(runs::status.eq_any(active))
        .select(RunRow::as_select())
        .order((runs::created_at.asc(), runs::id.asc()))
        .load(c))?;
    Ok(rows)
}

/// Postgres: makes the caller's transaction the only one claiming git run branches until it
/// ends, so that two controllers never both accept a run on one branch. SQLite's write
/// transactions are serial already.
pub fn serialize_branch_claims(conn: &mut Conn) -> Result<(), DbError> {
    if let Conn::Pg(c) = conn {
        // "loopd" + 2: distinct from the starts' lock above and the duties' lock.
        diesel::sql_query("SELECT pg_advisory_xact_lock(465726042214)").execute(&mut **c)?;
    }
    Ok(())
}
