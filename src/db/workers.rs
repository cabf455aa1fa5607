//! Queries on `workers`.

use super::models::WorkerRow;
use super::schema::workers;
use super::{on_conn, Conn, DbError};
use crate::domain::WorkerStatus;
use diesel::prelude::*;

pub fn insert(conn: &mut Conn, row: &WorkerRow) -> Result<(), DbError> {
    on_conn!(conn, |c| diesel::insert_into(workers::table)
        .values(row)
        .execute(c))?;
    Ok(())
}

pub fn get(conn: &mut Conn, id: &str) -> Result<Option<WorkerRow>, DbError> {
    let r = on_conn!(conn, |c| workers::table
        .find(id)
        .select(WorkerRow::as_select())
        .get_result(c)
        .optional())?;
    Ok(r)
}

/// Every worker, newest registration first.
pub fn all(conn: &mut Conn) -> Result<Vec<WorkerRow>, DbError> {
    let r = on_conn!(conn, |c| workers::table
        .select(WorkerRow::as_select())
        .order((workers::registered_at.desc(), workers::id.desc()))
        .load(c))?;
    Ok(r)
}

/// Workers in one of `statuses`.
pub fn with_status(conn: &mut Conn, statuses: &[WorkerStatus]) -> Result<Vec<WorkerRow>, DbError> {
    let list: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
    let r = on_conn!(conn, |c| workers::table
        .filter(workers::status.eq_any(list))
        .select(WorkerRow::as_select())
        .load(c))?;
    Ok(r)
}

/// Records a heartbeat: the status the worker reports and the time it was seen (unless the
/// worker was marked offline or revoked meanwhile: then nothing changes and `false` returns).
pub fn touch(
    conn: &mut Conn,
    id: &str,
    status: &str,
    metrics_json: Option<&str>,
    now_ms: i64,
) -> Result<bool, DbError> {
    let n = on_conn!(conn, |c| diesel::update(
        workers::table
            .find(id)
            .filter(workers::status.eq_any(["idle", "busy", "draining"]))
    )
    .set((
        workers::status.eq(status),
        workers::last_heartbeat_at.eq(now_ms),
        workers::metrics_json.eq(metrics_json),
    ))
    .execute(c))?;
    Ok(n == 1)
}

pub fn set_status(conn: &mut Conn, id: &str, status: WorkerStatus) -> Result<bool, DbError> {
    let n = on_conn!(conn, |c| diesel::update(workers::table.find(id))
        .set(workers::status.eq(status.as_str()))
        .execute(c))?;
    Ok(n == 1)
}

/// Pins a worker registered without an instance id to the first one it presented.
pub fn pin_instance(conn: &mut Conn, id: &str, instance: &str) -> Result<(), DbError> {
    on_conn!(conn, |c| diesel::update(
        workers::table
            .find(id)
            .filter(workers::instance_id.is_null())
    )
    .set(workers::instance_id.eq(Some(instance)))
    .execute(c))?;
    Ok(())
}

/// Records many heartbeats at once, written at `now_ms`: each worker's reported status and
/// metrics, heard `age` ms before (`(id, status, metrics_json, age)`); a later beat another
/// controller wrote meanwhile is kept. Workers no longer online are left alone, as in
/// [`touch`]. One statement on Postgres.
pub fn touch_many(
    conn: &mut Conn,
    beats: &[(String, String, Option<String>, i64)],
    now_ms: i64,
) -> Result<(), DbError> {
    use diesel::sql_types::{Array, BigInt, Nullable, Text};
    let heard = |age: i64| now_ms - age.max(0);
    if let Conn::Pg(c) = conn {
        let ids: Vec<&str> = beats.iter().map(|b| b.0.as_str()).collect();
        let statuses: Vec<&str> = beats.iter().map(|b| b.1.as_str()).collect();
        let metrics: Vec<Option<&str>> = beats.iter().map(|b| b.2.as_deref()).collect();
        let at: Vec<i64> = beats.iter().map(|b| heard(b.3)).collect();
        diesel::sql_query(
            "UPDATE workers SET status = u.status, metrics_json = u.metrics, \
             last_heartbeat_at = GREATEST(workers.last_heartbeat_at, u.at) \
             FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[]) \
                  AS u(at, id, status, metrics) \
             WHERE workers.id = u.id AND workers.status IN ('idle', 'busy', 'draining')",
        )
        .bind::<Array<BigInt>, _>(at)
        .bind::<Array<Text>, _>(ids)
        .bind::<Array<Text>, _>(statuses)
        .bind::<Array<Nullable<Text>>, _>(metrics)
        .execute(&mut **c)?;
        return Ok(());
    }
    for (id, status, metrics, age) in beats {
        touch(conn, id, status, metrics.as_deref(), heard(*age))?;
    }
    Ok(())
}

/// Marks offline, in one statement, the online workers whose last heartbeat is older than
/// `cut_ms`; returns their ids. A beat written meanwhile (by any controller) keeps its worker.
pub fn mark_silent_offline(conn: &mut Conn, cut_ms: i64) -> Result<Vec<String>, DbError> {
    let ids = on_conn!(conn, |c| diesel::update(
        workers::table
            .filter(workers::status.eq_any(["idle", "busy", "draining"]))
            .filter(workers::last_heartbeat_at.lt(cut_ms))
    )
    .set(workers::status.eq("offline"))
    .returning(workers::id)
    .get_results::<String>(c))?;
    Ok(ids)
}

/// Every online worker is heard from at `now_ms` (the offline checks did not run for a while:
/// their silence was the checker's, not theirs).
pub fn all_online_heard_at(conn: &mut Conn, now_ms: i64) -> Result<usize, DbError> {
    let n = on_conn!(conn, |c| diesel::update(
        workers::table.filter(workers::status.eq_any(["idle", "busy", "draining"]))
    )
    .set(workers::last_heartbeat_at.eq(now_ms))
    .execute(c))?;
    Ok(n)
}

/// How many workers are idle, busy or draining.
/// The key of the Postgres advisory lock that serialises registrations.
const REGISTRATION_LOCK_KEY: i64 = 0x6c6f_6f70_6472_6567;

/// [`count_online`] inside a registration's transaction, after taking a transaction-scoped
/// advisory lock on Postgres: controllers sharing the database register one worker at a time,
/// so two cannot both pass `limits.max_live_workers`. (SQLite has one controller, which
/// serialises its registrations itself.)
pub fn count_online_for_registration(conn: &mut Conn) -> Result<usize, DbError> {
    if let Conn::Pg(c) = conn {
        diesel::sql_query(format!(
            "SELECT pg_advisory_xact_lock({REGISTRATION_LOCK_KEY})"
        ))
        .execute(&mut **c)?;
    }
    count_online(conn)
}

pub fn count_online(conn: &mut Conn) -> Result<usize, DbError> {
    let n: i64 = on_conn!(conn, |c| workers::table
        .filter(workers::status.eq_any(["idle", "busy", "draining"]))
        .count()
        .get_result(c))?;
    Ok(n as usize)
}
