//! A dedicated Postgres session, for what a pool of connections cannot do: LISTEN for the
//! notices other controllers send, and hold a session-level advisory lock (the controller
//! duties), which Postgres releases when the session ends — however its process ended.
//! diesel has no LISTEN, so this is libpq itself, through the `pq-sys` that diesel already
//! links, in non-blocking mode on the async runtime: the session's socket is watched with
//! [`AsyncFd`], and nothing blocks a thread but the connection itself (on a blocking thread).
//! Used by `actors::peers` only.

use super::DbError;
use pq_sys::{
    ConnStatusType, ExecStatusType, PGconn, PQclear, PQconnectdbParams, PQconsumeInput,
    PQerrorMessage, PQfinish, PQflush, PQfreemem, PQgetResult, PQgetisnull, PQgetvalue, PQisBusy,
    PQnotifies, PQntuples, PQresultErrorMessage, PQresultStatus, PQsendQuery, PQsetNoticeProcessor,
    PQsetnonblocking, PQsocket, PQstatus,
};
use std::ffi::{c_char, CStr, CString};
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::NonNull;
use std::time::Duration;
use tokio::io::unix::AsyncFd;

/// How long a wait for the socket lasts before libpq is asked again (see `read_more`).
const RECHECK: Duration = Duration::from_millis(50);

/// A notice received on a channel this session listens to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub channel: String,
    pub payload: String,
}

/// The libpq connection, closed on drop.
struct Raw(NonNull<PGconn>);

// SAFETY: a libpq connection may be used from any thread, one at a time; `Session` owns it
// and every use takes `&mut self`.
unsafe impl Send for Raw {}

impl Drop for Raw {
    fn drop(&mut self) {
        // SAFETY: the pointer came from PQconnectdbParams and is finished once, here.
        unsafe { PQfinish(self.0.as_ptr()) }
    }
}

/// The session's socket, as `AsyncFd` wants it.
struct Socket(RawFd);

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// One Postgres session (see the module's header).
pub struct Session {
    // Dropped first: the socket is deregistered before libpq closes it.
    fd: AsyncFd<Socket>,
    raw: Raw,
}

/// libpq's message about the connection.
fn conn_error(conn: *const PGconn) -> String {
    // SAFETY: PQerrorMessage returns a NUL-terminated string owned by the connection.
    unsafe { CStr::from_ptr(PQerrorMessage(conn)) }
        .to_string_lossy()
        .trim()
        .to_string()
}

/// libpq's notices and the server's unsolicited errors (say "terminating connection due to
/// administrator command") go to the log, not raw to stderr as libpq's default processor
/// writes them, which broke `log_format = "json"`. The session's loss itself is seen and
/// reported by the next read.
unsafe extern "C" fn log_notice(_arg: *mut std::ffi::c_void, message: *const c_char) {
    if message.is_null() {
        return;
    }
    // SAFETY: libpq passes a NUL-terminated message that lives for the call.
    let message = unsafe { CStr::from_ptr(message) }.to_string_lossy();
    tracing::info!(notice = %message.trim(), "postgres session (peers)");
}

fn cstring(s: &str) -> Result<CString, DbError> {
    CString::new(s).map_err(|_| DbError::Connect("a NUL byte in the connection settings".into()))
}

impl Session {
    /// Opens a session to `url` (a `postgres://` URL or a libpq connection string), with TCP
    /// keepalives so that a database gone silent is noticed.
    pub async fn connect(url: &str) -> Result<Session, DbError> {
        let url = url.to_string();
        let raw = tokio::task::spawn_blocking(move || -> Result<Raw, DbError> {
            // The first `dbname` is expanded (the URL); the keywords after it add to it.
            let pairs = [
                ("dbname", url.as_str()),
                ("application_name", "loopd-peers"),
                ("keepalives", "1"),
                ("keepalives_idle", "5"),
                ("keepalives_interval", "2"),
                ("keepalives_count", "3"),
                ("connect_timeout", "5"),
            ];
            let keys = (pairs.iter().map(|(k, _)| cstring(k))).collect::<Result<Vec<_>, _>>()?;
            let vals = (pairs.iter().map(|(_, v)| cstring(v))).collect::<Result<Vec<_>, _>>()?;
            let mut kp: Vec<*const c_char> = keys.iter().map(|k| k.as_ptr()).collect();
            let mut vp: Vec<*const c_char> = vals.iter().map(|v| v.as_ptr()).collect();
            kp.push(std::ptr::null());
            vp.push(std::ptr::null());
            // SAFETY: both arrays are NULL-terminated and outlive the call.
            let conn = unsafe { PQconnectdbParams(kp.as_ptr(), vp.as_ptr(), 1) };
            let raw = Raw(NonNull::new(conn)
                .ok_or_else(|| DbError::Connect("libpq could not allocate a connection".into()))?);
            // SAFETY: a live connection.
            if unsafe { PQstatus(raw.0.as_ptr()) } != ConnStatusType::CONNECTION_OK {
                return Err(DbError::Connect(conn_error(raw.0.as_ptr())));
            }
            // SAFETY: a live connection; the processor keeps no pointer to anything.
            unsafe { PQsetNoticeProcessor(raw.0.as_ptr(), Some(log_notice), std::ptr::null_mut()) };
            // SAFETY: a live connection.
            if unsafe { PQsetnonblocking(raw.0.as_ptr(), 1) } != 0 {
                return Err(DbError::Connect(conn_error(raw.0.as_ptr())));
            }
            Ok(raw)
        })
        .await
        .map_err(|e| DbError::Join(e.to_string()))??;
        // SAFETY: a live connection.
        let fd = unsafe { PQsocket(raw.0.as_ptr()) };
        if fd < 0 {
            return Err(DbError::Connect(conn_error(raw.0.as_ptr())));
        }
        // SAFETY: the socket stays open, and the same, until `fd` is dropped: `Session` drops
        // it before the connection (field order), and the connection is never reset.
        let fd = unsafe { AsyncFd::register(Socket(fd)) }
            .map_err(|e| DbError::Connect(e.to_string()))?;
        Ok(Session { fd, raw })
    }

    fn conn(&self) -> *mut PGconn {
        self.raw.0.as_ptr()
    }

    /// Reads what the server sent (call after the socket was readable).
    fn consume(&mut self) -> Result<(), DbError> {
        // SAFETY: a live connection.
        if unsafe { PQconsumeInput(self.conn()) } == 0 {
            return Err(DbError::Connect(conn_error(self.conn())));
        }
        Ok(())
    }

    /// Waits until the socket is readable (at most [`RECHECK`]), then reads what arrived.
    /// Readiness is cleared before reading, so data that arrives after the read wakes the next
    /// wait. The wait is bounded because libpq may leave data it did not read yet where no
    /// new readiness announces it: over TLS it reads one record at a time, so records already
    /// on the socket (or decrypted in the TLS layer) wait for the next read, and a session
    /// waiting only for readiness would hang.
    async fn read_more(&mut self) -> Result<(), DbError> {
        if let Ok(ready) = tokio::time::timeout(RECHECK, self.fd.readable()).await {
            let mut guard = ready.map_err(|e| DbError::Connect(e.to_string()))?;
            guard.clear_ready();
        }
        self.consume()
    }

    /// Runs `sql` (one or more statements, no parameters) and returns the first column of
    /// the first row of the last result that has rows, within `timeout`.
    pub async fn query(&mut self, sql: &str, timeout: Duration) -> Result<Option<String>, DbError> {
        match tokio::time::timeout(timeout, self.query_inner(sql)).await {
            Ok(r) => r,
            Err(_) => Err(DbError::Connect(format!(
                "no answer from the database within {} ms",
                timeout.as_millis()
            ))),
        }
    }

    async fn query_inner(&mut self, sql: &str) -> Result<Option<String>, DbError> {
        let text = CString::new(sql).map_err(|_| DbError::Reply("a NUL byte in SQL".into()))?;
        // SAFETY: a live connection and a NUL-terminated query.
        if unsafe { PQsendQuery(self.conn(), text.as_ptr()) } == 0 {
            return Err(DbError::Connect(conn_error(self.conn())));
        }
        loop {
            // SAFETY: a live connection.
            match unsafe { PQflush(self.conn()) } {
                0 => break,
                1 => {
                    let mut g =
                        (self.fd.writable().await).map_err(|e| DbError::Connect(e.to_string()))?;
                    g.clear_ready();
                    drop(g);
                    self.consume()?;
                }
                _ => return Err(DbError::Connect(conn_error(self.conn()))),
            }
        }
        let mut value = None;
        let mut failure = None;
        loop {
            // SAFETY: a live connection.
            while unsafe { PQisBusy(self.conn()) } == 0 {
                // SAFETY: a live connection; each result is cleared once.
                let res = unsafe { PQgetResult(self.conn()) };
                if res.is_null() {
                    return match failure {
                        Some(e) => Err(DbError::Reply(e)),
                        None => Ok(value),
                    };
                }
                // SAFETY: `res` is a live result until PQclear.
                unsafe {
                    match PQresultStatus(res) {
                        ExecStatusType::PGRES_TUPLES_OK => {
                            if PQntuples(res) > 0 && PQgetisnull(res, 0, 0) == 0 {
                                let v = CStr::from_ptr(PQgetvalue(res, 0, 0));
                                value = Some(v.to_string_lossy().into_owned());
                            }
                        }
                        ExecStatusType::PGRES_COMMAND_OK => {}
                        _ => {
                            let msg = CStr::from_ptr(PQresultErrorMessage(res));
                            failure = Some(msg.to_string_lossy().trim().to_string());
                        }
                    }
                    PQclear(res);
                }
            }
            self.read_more().await?;
        }
    }

    /// A notice already received, if any.
    fn take_notice(&mut self) -> Option<Notice> {
        // SAFETY: a live connection; the notice is freed once, after its strings are copied.
        unsafe {
            let n = PQnotifies(self.conn());
            if n.is_null() {
                return None;
            }
            let notice = Notice {
                channel: CStr::from_ptr((*n).relname).to_string_lossy().into_owned(),
                payload: CStr::from_ptr((*n).extra).to_string_lossy().into_owned(),
            };
            PQfreemem(n.cast());
            Some(notice)
        }
    }

    /// The next notice on the channels this session listens to (cancel-safe: a notice is
    /// only taken once it is returned).
    pub async fn next_notice(&mut self) -> Result<Notice, DbError> {
        loop {
            if let Some(n) = self.take_notice() {
                return Ok(n);
            }
            self.read_more().await?;
        }
    }

    /// Notices received while a query was answered, without waiting.
    pub fn received(&mut self) -> Vec<Notice> {
        std::iter::from_fn(|| self.take_notice()).collect()
    }
}

/// `text` as an SQL string literal (standard strings: only the quote is doubled).
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}
