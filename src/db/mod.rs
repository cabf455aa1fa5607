//! The only module that touches diesel. One interface over SQLite and Postgres: a pooled
//! [`Conn`] whose queries are written once and compiled for both backends (the [`on_conn!`]
//! macro), write transactions that are `BEGIN IMMEDIATE` on SQLite, embedded migrations per
//! backend, and [`Db::run`], the one helper that keeps blocking database work off async threads.
//! A lookup by a key reads its row with `get_result`, not `first`: `first` adds a bound
//! `LIMIT`, whose value SQLite plans with, so it compiles the statement again at every run.
//!
//! On Postgres the hot paths are functions in the database. Their current text is one file
//! each in `src/db/pg/`, written at start after the migrations (see `pg`); the migrations in
//! `migrations/postgres/` are the schema's history, whose function texts may be out of date.

pub mod accounts;
pub mod artifacts;
pub mod batch;
pub mod events;
pub mod fast;
mod leased;
pub mod leases;
pub mod listen;
mod migrate;
pub mod models;
pub mod output;
mod pg;
mod pg_pool;
mod requeue;
pub mod runs;
pub mod schema;
mod step_lease;
pub mod steps;
mod takeover;
pub mod usage;
pub mod workers;

use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::r2d2::{self, ConnectionManager, CustomizeConnection, PooledConnection};
use diesel::sqlite::SqliteConnection;
pub use pg_pool::PgManager;
use pg_pool::{check_after_error, create_database, Suspect};
use std::path::Path;
use std::time::Duration;

/// Which database a pool talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Everything that can go wrong in storage, including the outcomes callers branch on.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("cannot connect to the database: {0}")]
    Connect(String),
    #[error("database pool: {0}")]
    Pool(String),
    #[error("migrations failed: {0}")]
    Migration(String),
    #[error("not found")]
    NotFound,
    /// A write carried an epoch that is not the step's current lease.
    #[error("stale lease: the step is no longer leased to this worker at this epoch")]
    StaleLease,
    /// A state change that the current state does not allow.
    #[error("invalid transition: {0}")]
    InvalidTransition(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("blocking task failed: {0}")]
    Join(String),
    /// A reply the code cannot read (a schema and binary out of step), or a call to a
    /// Postgres-only function on SQLite.
    #[error("unexpected database reply: {0}")]
    Reply(String),
}

impl DbError {
    /// True when the database itself is unreachable or failing (as opposed to a domain outcome).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            DbError::Connect(_) | DbError::Pool(_) | DbError::Join(_) | DbError::Query(_)
        )
    }
}

/// A pooled connection to either backend.
pub enum Conn {
    Sqlite(PooledConnection<ConnectionManager<SqliteConnection>>),
    Pg(PooledConnection<PgManager>),
}

/// Runs `$body` with `$c` bound to the concrete connection (`&mut SqliteConnection` or
/// `&mut PgConnection`): the query is written once and type-checked for both backends.
#[macro_export]
macro_rules! on_conn {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::db::Conn::Sqlite(pooled) => {
                let $c: &mut ::diesel::sqlite::SqliteConnection = &mut **pooled;
                $body
            }
            $crate::db::Conn::Pg(pooled) => {
                let $c: &mut ::diesel::pg::PgConnection = &mut **pooled;
                $body
            }
        }
    };
}
pub use on_conn;

impl Conn {
    pub fn backend(&self) -> Backend {
        match self {
            Conn::Sqlite(_) => Backend::Sqlite,
            Conn::Pg(_) => Backend::Postgres,
        }
    }

    /// A write transaction: `BEGIN IMMEDIATE` on SQLite (takes the write lock up front, so two
    /// writers never deadlock on a lock upgrade), `BEGIN` (read committed) on Postgres. The
    /// closure may fail with any error that a `DbError` converts into.
    pub fn write_tx<R, E: From<DbError>>(
        &mut self,
        f: impl FnOnce(&mut Conn) -> Result<R, E>,
    ) -> Result<R, E> {
        let begin = match self.backend() {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        };
        on_conn!(self, |c| AnsiTransactionManager::begin_transaction_sql(
            c, begin
        ))
        .map_err(|e| E::from(e.into()))?;
        match f(self) {
            Ok(v) => {
                on_conn!(self, |c| AnsiTransactionManager::commit_transaction(c))
                    .map_err(|e| E::from(e.into()))?;
                Ok(v)
            }
            Err(e) => {
                // The rollback error (if any) is secondary to the one that caused it.
                let _ = on_conn!(self, |c| AnsiTransactionManager::rollback_transaction(c));
                Err(e)
            }
        }
    }

    /// The database clock in milliseconds since the epoch (lease times use it, never a
    /// worker's clock). Queries that need it alongside other data select [`loopd_now_ms`].
    pub fn now_ms(&mut self) -> Result<i64, DbError> {
        let now = on_conn!(self, |c| diesel::select(loopd_now_ms()).get_result(c))?;
        Ok(now)
    }
}

#[diesel::declare_sql_function]
extern "SQL" {
    /// The database clock in ms since the epoch: a function in the Postgres schema (see its
    /// migration); on SQLite, registered on every connection (the file's clock is this host's).
    fn loopd_now_ms() -> diesel::sql_types::BigInt;
}

#[derive(Debug)]
struct SqlitePragmas;

impl CustomizeConnection<SqliteConnection, r2d2::Error> for SqlitePragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), r2d2::Error> {
        use diesel::connection::SimpleConnection;
        conn.batch_execute(
            "PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;",
        )
        .map_err(r2d2::Error::QueryError)?;
        loopd_now_ms_utils::register_nondeterministic_impl(conn, crate::domain::time::now_ms)
            .map_err(r2d2::Error::QueryError)
    }
}

#[derive(Clone)]
enum Pool {
    Sqlite(r2d2::Pool<ConnectionManager<SqliteConnection>>),
    Pg(r2d2::Pool<PgManager>, Suspect),
}

/// The storage handle: a connection pool plus the blocking helper. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    /// SQLite: write transactions of this process take turns here. SQLite lets one writer in
    /// at a time and makes the others poll (its busy handler sleeps 1, 2, 5, 10 … ms), which
    /// put milliseconds of sleep on every step; a mutex hands over at once.
    write_turn: Option<std::sync::Arc<std::sync::Mutex<()>>>,
    /// Postgres: completions written together ([`batch`]).
    batch: Option<std::sync::Arc<batch::Batcher>>,
}

impl Db {
    /// Opens (creating if needed) the SQLite file, switches it to WAL once, builds the pool
    /// and runs the embedded migrations. A database of the existing daemon is taken over
    /// first; a file that is neither that nor loopd's is refused untouched ([`takeover`]).
    pub fn open_sqlite(path: &Path, pool_size: u32) -> Result<Db, DbError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| DbError::Connect(format!("cannot create {}: {e}", dir.display())))?;
        }
        takeover::take_over_if_upstream(path)?;
        let url = path.to_string_lossy().to_string();
        {
            use diesel::connection::SimpleConnection;
            // WAL persists in the file; setting it once here (not per pooled connection)
            // avoids the "database is locked" race between connections switching modes.
            let mut c = SqliteConnection::establish(&url)
                .map_err(|e| DbError::Connect(format!("{}: {e}", path.display())))?;
            c.batch_execute("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000;")?;
            migrate::run_sqlite(&mut c)?;
        }
        let pool = r2d2::Pool::builder()
            .max_size(pool_size)
            .connection_timeout(Duration::from_secs(30))
            .connection_customizer(Box::new(SqlitePragmas))
            .build(ConnectionManager::<SqliteConnection>::new(url))
            .map_err(|e| DbError::Connect(e.to_string()))?;
        Ok(Db {
            pool: Pool::Sqlite(pool),
            write_turn: Some(Default::default()),
            batch: None,
        })
    }

    /// Connects to Postgres, runs the embedded migrations under an advisory lock (when
    /// `migrate`), and builds the pool. The pool is lazy past its first connection, so a
    /// database that goes away later makes requests fail, not the process.
    pub fn open_postgres(url: &str, pool_size: u32, migrate: bool) -> Result<Db, DbError> {
        let mut c = match PgConnection::establish(url) {
            Ok(c) => c,
            Err(e) if migrate && e.to_string().contains("does not exist") => {
                create_database(url)?;
                PgConnection::establish(url).map_err(|e| DbError::Connect(e.to_string()))?
            }
            Err(e) => return Err(DbError::Connect(e.to_string())),
        };
        if migrate {
            migrate::run_postgres(&mut c)?;
        }
        drop(c);
        let suspect = Suspect::default();
        let pool = r2d2::Pool::builder()
            .max_size(pool_size)
            .min_idle(Some(pool_size.min(4)))
            .connection_timeout(Duration::from_secs(5))
            .build(PgManager {
                inner: ConnectionManager::<PgConnection>::new(url),
                suspect: suspect.clone(),
            })
            .map_err(|e| DbError::Connect(e.to_string()))?;
        let mut db = Db {
            pool: Pool::Pg(pool, suspect),
            write_turn: None,
            batch: None,
        };
        db.batch = Some(std::sync::Arc::new(batch::Batcher::new(db.clone())));
        Ok(db)
    }

    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Pg(..) => Backend::Postgres,
        }
    }

    /// On Postgres, the queue where completions wait to be written together.
    pub fn batcher(&self) -> Option<std::sync::Arc<batch::Batcher>> {
        self.batch.clone()
    }

    /// Checks out a connection (blocking). Use inside [`Db::run`] or a blocking thread only.
    pub fn conn(&self) -> Result<Conn, DbError> {
        match &self.pool {
            Pool::Sqlite(p) => p
                .get()
                .map(Conn::Sqlite)
                .map_err(|e| DbError::Pool(e.to_string())),
            Pool::Pg(p, _) => p
                .get()
                .map(Conn::Pg)
                .map_err(|e| DbError::Pool(e.to_string())),
        }
    }

    /// After a call failed on `conn`: see [`PgManager`].
    fn check_after_error(&self, conn: &mut Conn) {
        if let (Pool::Pg(_, suspect), Conn::Pg(c)) = (&self.pool, conn) {
            check_after_error(suspect, c);
        }
    }

    /// Runs `f` with a pooled connection on tokio's blocking pool: the one way async code
    /// reaches the database.
    pub async fn run<R, E, F>(&self, f: F) -> Result<R, E>
    where
        R: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&mut Conn) -> Result<R, E> + Send + 'static,
    {
        self.run_lazy(move |lazy| f(lazy.get()?)).await
    }

    /// Like [`Db::run`], but the connection is taken from the pool only when `f` first asks
    /// for it: a completion that waits for its batch holds none meanwhile (with one held by
    /// each waiting completion, the pool's size bounded the batches).
    pub async fn run_lazy<R, E, F>(&self, f: F) -> Result<R, E>
    where
        R: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&mut LazyConn) -> Result<R, E> + Send + 'static,
    {
        let db = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut lazy = LazyConn::new(&db);
            let r = f(&mut lazy);
            if let (Err(_), Some(conn)) = (&r, lazy.conn.as_mut()) {
                db.check_after_error(conn);
            }
            r
        })
        .await
        .map_err(|e| E::from(DbError::Join(e.to_string())))?
    }

    /// Like [`Db::run`], inside one write transaction.
    pub async fn tx<R, E, F>(&self, f: F) -> Result<R, E>
    where
        R: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&mut Conn) -> Result<R, E> + Send + 'static,
    {
        let db = self.clone();
        tokio::task::spawn_blocking(move || {
            // Taken before the connection, so that a waiting writer holds none.
            let _turn = db
                .write_turn
                .as_ref()
                .map(|t| t.lock().unwrap_or_else(|p| p.into_inner()));
            let mut conn = db.conn()?;
            let r = conn.write_tx(f);
            if r.is_err() {
                db.check_after_error(&mut conn);
            }
            r
        })
        .await
        .map_err(|e| E::from(DbError::Join(e.to_string())))?
    }
}

/// Where a path that may not need the database gets its connection: one already held, or
/// one taken on first use.
pub trait ConnSource {
    fn get(&mut self) -> Result<&mut Conn, DbError>;
}

impl ConnSource for Conn {
    fn get(&mut self) -> Result<&mut Conn, DbError> {
        Ok(self)
    }
}

/// A pooled connection taken on first use (see [`Db::run_lazy`]).
pub struct LazyConn {
    db: Db,
    conn: Option<Conn>,
}

impl LazyConn {
    pub fn new(db: &Db) -> LazyConn {
        LazyConn {
            db: db.clone(),
            conn: None,
        }
    }
}

impl ConnSource for LazyConn {
    /// The connection, taken from the pool now if it was not yet.
    fn get(&mut self) -> Result<&mut Conn, DbError> {
        match &mut self.conn {
            Some(c) => Ok(c),
            empty => Ok(empty.insert(self.db.conn()?)),
        }
    }
}
