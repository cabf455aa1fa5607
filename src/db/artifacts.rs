//! Queries on `artifacts`: one row per (run, name); re-storing a name replaces its row.

use super::models::ArtifactRow;
use super::schema::artifacts;
use super::{on_conn, Conn, DbError};
use diesel::prelude::*;

/// Records an artifact, replacing an earlier one of the same name in the run.
pub fn upsert(conn: &mut Conn, row: &ArtifactRow) -> Result<(), DbError> {
    on_conn!(conn, |c| {
        diesel::delete(
            artifacts::table
                .filter(artifacts::run_id.eq(&row.run_id))
                .filter(artifacts::name.eq(&row.name)),
        )
        .execute(c)?;
        diesel::insert_into(artifacts::table).values(row).execute(c)
    })?;
    Ok(())
}

/// A run's artifacts, oldest first.
pub fn for_run(conn: &mut Conn, run_id: &str) -> Result<Vec<ArtifactRow>, DbError> {
    let rows = on_conn!(conn, |c| artifacts::table
        .filter(artifacts::run_id.eq(run_id))
        .select(ArtifactRow::as_select())
        .order((artifacts::created_at.asc(), artifacts::name.asc()))
        .load(c))?;
    Ok(rows)
}

pub fn get(conn: &mut Conn, run_id: &str, name: &str) -> Result<Option<ArtifactRow>, DbError> {
    let r = on_conn!(conn, |c| artifacts::table
        .filter(artifacts::run_id.eq(run_id))
        .filter(artifacts::name.eq(name))
        .select(ArtifactRow::as_select())
        .get_result(c)
        .optional())?;
    Ok(r)
}
