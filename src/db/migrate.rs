//! Embedded migrations, one tree per backend, run at start by the role that owns the database.

use super::DbError;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

const SQLITE: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// Any fixed number: the key of the advisory lock that serialises concurrent migrators.
const MIGRATION_LOCK_KEY: i64 = 0x6c6f_6f70_6400;

pub(super) fn run_sqlite(conn: &mut SqliteConnection) -> Result<(), DbError> {
    let applied = conn
        .run_pending_migrations(SQLITE)
        .map_err(|e| DbError::Migration(e.to_string()))?
        .len();
    tracing::info!(applied, backend = "sqlite", "migrations done");
    Ok(())
}

/// Runs pending migrations, then writes the functions whose current text (`super::pg`) the
/// database lacks, while holding a Postgres advisory lock, so two controllers starting at once
/// do not race.
pub(super) fn run_postgres(conn: &mut PgConnection) -> Result<(), DbError> {
    diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})")).execute(conn)?;
    let result = conn
        .run_pending_migrations(POSTGRES)
        .map(|v| v.len())
        .map_err(|e| DbError::Migration(e.to_string()))
        .and_then(|applied| Ok((applied, super::pg::apply(conn)?)));
    let unlock =
        diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})")).execute(conn);
    let (applied, functions) = result?;
    unlock?;
    tracing::info!(applied, functions, backend = "postgres", "migrations done");
    Ok(())
}
