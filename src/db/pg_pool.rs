//! Postgres connections: the pool's manager, which tests a connection at checkout only while
//! the pool is suspect, and the creation of the database on a controller's first start.

use super::DbError;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::r2d2::{self, ConnectionManager};
use std::time::Duration;

/// Postgres connections for the pool. r2d2 would run `SELECT 1` on every checkout (a round
/// trip per transaction); here a connection is tested at checkout only while the pool is
/// suspect: after a statement failed on a connection that then failed the same test (the
/// server restarted, or dropped it), for [`SUSPECT_FOR`], so the dead ones are weeded out.
#[derive(Debug)]
pub struct PgManager {
    pub(super) inner: ConnectionManager<PgConnection>,
    pub(super) suspect: Suspect,
}

/// Until when (ms since the epoch, process clock) checkouts test their connection; shared by
/// the pool's manager and the [`super::Db`] that reports failures.
pub(super) type Suspect = std::sync::Arc<std::sync::atomic::AtomicI64>;

/// After a call failed on `conn`: a connection that no longer answers makes the pool suspect.
pub(super) fn check_after_error(suspect: &Suspect, conn: &mut PgConnection) {
    use diesel::r2d2::R2D2Connection;
    if conn.ping().is_err() {
        let until = crate::domain::time::now_ms() + SUSPECT_FOR.as_millis() as i64;
        suspect.store(until, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            "a database connection is dead: testing connections at checkout for a while"
        );
    }
}

/// How long checkouts test connections after a dead one was found.
const SUSPECT_FOR: Duration = Duration::from_secs(60);

impl r2d2::ManageConnection for PgManager {
    type Connection = PgConnection;
    type Error = r2d2::Error;

    fn connect(&self) -> Result<PgConnection, r2d2::Error> {
        self.inner.connect()
    }

    fn is_valid(&self, conn: &mut PgConnection) -> Result<(), r2d2::Error> {
        let now = crate::domain::time::now_ms();
        if now < self.suspect.load(std::sync::atomic::Ordering::Relaxed) {
            self.inner.is_valid(conn)
        } else {
            Ok(())
        }
    }

    fn has_broken(&self, conn: &mut PgConnection) -> bool {
        self.inner.has_broken(conn)
    }
}

/// Creates the database a Postgres URL names, through the server's `postgres` database (the
/// role that owns the database may create it on first start).
pub(super) fn create_database(url: &str) -> Result<(), DbError> {
    let parsed =
        url::Url::parse(url).map_err(|e| DbError::Connect(format!("invalid storage.url: {e}")))?;
    let name = parsed.path().trim_start_matches('/').to_string();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(DbError::Connect(format!(
            "database \"{name}\" does not exist"
        )));
    }
    let mut admin = parsed.clone();
    admin.set_path("/postgres");
    let mut c = PgConnection::establish(admin.as_str()).map_err(|e| {
        DbError::Connect(format!(
            "database \"{name}\" does not exist and cannot be created: {e}"
        ))
    })?;
    diesel::sql_query(format!("CREATE DATABASE \"{name}\""))
        .execute(&mut c)
        .map_err(|e| DbError::Connect(format!("cannot create database \"{name}\": {e}")))?;
    tracing::info!(database = %name, "created the database");
    Ok(())
}
