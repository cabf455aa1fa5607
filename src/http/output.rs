//! `GET /runs/{id}/output` (SSE): the run's output, its steps' outputs in step order, from a
//! cursor, then live. Positions are run-wide and counted in UTF-16 code units (what a
//! JavaScript string's `length` counts): a frame's `offset` is where its first character
//! starts, and `offset + content.length` is its `id:` and the next frame's `offset`. A cursor
//! inside a character (the second half of a surrogate pair) starts at that character.
//!
//! A stream first reads what the store holds after its cursor; then it takes the frames the
//! output feed hands out as workers post (built once for all readers). A frame that does not
//! start at the cursor, a lag, or a wake-up of the event hub (a step or the run changed) sends
//! it back to the store, so nothing is skipped or repeated.

use super::error::ApiError;
use super::extract::Id;
use super::state::AppState;
use super::stream_slots::{Full, StreamSlot};
use super::streams::{last_event_id, require_run, sse, wait};
use crate::db::{self, DbError};
use crate::domain::RunStatus;
use crate::output_store::{frame, Frame, Place, Seek};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::stream;
use std::sync::Arc;
use tokio::sync::{broadcast, watch};

/// Output bytes per frame: as large as the chunks workers post, so a reader keeps up with them.
const CHUNK: usize = 256 * 1024;

#[derive(serde::Deserialize)]
pub struct OutputQuery {
    offset: Option<u64>,
}

struct OutputCursor {
    st: AppState,
    run_id: String,
    /// Run-wide units sent so far (the `id:` of the last frame).
    offset: u64,
    /// Where the last frame ended, so that the next read need not count from the step's start.
    at: Option<Place>,
    /// Wake-ups of the run (steps, status).
    rx: watch::Receiver<u64>,
    /// The frames built as output is posted.
    feed: broadcast::Receiver<Arc<Frame>>,
    /// Read the store before taking frames from the feed.
    read: bool,
    _slot: StreamSlot,
}

/// What a read of the output stream found at its cursor.
struct Located {
    /// The place of the cursor, when output is held there.
    at: Option<Place>,
    /// The run has ended: its output is complete.
    ended: bool,
}

/// Where the run's output cursor `offset` is. `hint` is a place known to match `offset` (the
/// end of the last frame).
fn locate(
    c: &mut db::Conn,
    st: &AppState,
    run_id: &str,
    offset: u64,
    hint: Option<&Place>,
) -> Result<Located, DbError> {
    let run = db::runs::require(c, run_id)?;
    let ended = run.run_status().is_some_and(RunStatus::is_terminal);
    let steps = db::steps::for_run(c, run_id)?;
    let ids: Vec<&str> = steps.iter().map(|s| s.id.as_str()).collect();
    let sizes = st.output.units_of(c, run_id, &ids)?;
    let mut start = 0u64;
    for (s, size) in steps.iter().zip(sizes) {
        if offset < start + size {
            let known = hint.filter(|h| h.step_id == s.id && h.start == start && h.unit == offset);
            let at = match known {
                Some(h) => Some(h.clone()),
                None => match st.output.seek(c, run_id, &s.id, offset - start)? {
                    Seek::Found(byte, unit) => Some(Place {
                        step_id: s.id.clone(),
                        start,
                        byte,
                        unit: start + unit,
                    }),
                    Seek::After(_) => None,
                },
            };
            return Ok(Located { at, ended });
        }
        start += size;
    }
    Ok(Located { at: None, ended })
}

/// Reads the store at the cursor: the next frame, or `None` with whether the run has ended
/// with everything sent.
async fn read_store(c: &mut OutputCursor) -> Result<Option<Arc<Frame>>, bool> {
    let (st, rid, off, hint) = (c.st.clone(), c.run_id.clone(), c.offset, c.at.take());
    let read =
        c.st.db
            .run(move |conn| {
                let found = locate(conn, &st, &rid, off, hint.as_ref())?;
                let chunk = match &found.at {
                    Some(at) => st.output.read(conn, &rid, &at.step_id, at.byte, CHUNK)?,
                    None => Vec::new(),
                };
                Ok::<_, DbError>((found, chunk))
            })
            .await;
    match read {
        Ok((found, chunk)) => match found.at {
            Some(at) => match frame(&at, &chunk, found.ended) {
                Some(f) if !chunk.is_empty() => Ok(Some(Arc::new(f))),
                _ => {
                    c.at = Some(at);
                    Ok(None)
                }
            },
            // Nothing after the cursor and the run has ended: all output was sent.
            None => Err(found.ended),
        },
        Err(e) => {
            tracing::warn!(error = %e, "output stream read failed");
            Err(false)
        }
    }
}

/// What a stream does next.
enum Next {
    Send(Bytes),
    Wait,
    End,
}

/// Takes the next frame of the feed, or a wake-up of the hub.
async fn take_live(c: &mut OutputCursor) -> Next {
    tokio::select! {
        got = c.feed.recv() => match got {
            Ok(f) if f.next.unit <= c.offset => Next::Wait,
            Ok(f) if f.at.unit == c.offset => {
                c.offset = f.next.unit;
                c.at = Some(f.next.clone());
                Next::Send(f.sse.clone())
            }
            // Not where the cursor is (posted out of order, or the store was read into it).
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                c.read = true;
                Next::Wait
            }
            Err(broadcast::error::RecvError::Closed) => Next::End,
        },
        woke = wait(&mut c.rx) => match woke {
            Ok(true) => {
                c.read = true;
                Next::Wait
            }
            // Storage is read again after a quiet period: a wake-up that never came (another
            // controller's notice missed while its session was down) is made good here.
            Ok(false) => {
                c.read = true;
                Next::Send(Bytes::from_static(b": keep-alive\n\n"))
            }
            Err(()) => Next::End,
        },
    }
}

fn full(f: Full) -> ApiError {
    let msg = match f {
        Full::Run(n) => format!("this run has {n} output streams open already; retry later"),
        Full::Client(n) => {
            format!("this client has {n} output streams open already; close one first")
        }
    };
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_streams", msg)
}

/// `GET /runs/{id}/output`
pub async fn output(
    st: web::Data<AppState>,
    id: Id,
    q: web::Query<OutputQuery>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let run_id = id.0;
    // Known runs only: a subscription stays in the hub until its run is next notified.
    require_run(&st, &run_id).await?;
    let rx = st.hub.subscribe(&run_id);
    let offset = match last_event_id(&req) {
        Some(v) => v.parse::<u64>().map_err(|_| {
            ApiError::bad_request("invalid_cursor", "Last-Event-ID must be an output position")
        })?,
        None => q.offset.unwrap_or(0),
    };
    let slot = st
        .streams
        .try_take(&run_id, req.peer_addr().map(|a| a.ip()))
        .map_err(full)?;
    // Subscribed before the store is read: a frame posted in between is not missed.
    let feed = st.output.feed().subscribe(&run_id);
    let cursor = OutputCursor {
        st: st.get_ref().clone(),
        run_id,
        offset,
        at: None,
        rx,
        feed,
        read: true,
        _slot: slot,
    };
    Ok(sse(stream::unfold(cursor, |mut c| async move {
        loop {
            if c.read {
                match read_store(&mut c).await {
                    Ok(Some(f)) => {
                        c.offset = f.next.unit;
                        c.at = Some(f.next.clone());
                        return Some((Ok(f.sse.clone()), c));
                    }
                    Ok(None) | Err(false) => c.read = false,
                    Err(true) => return None,
                }
            }
            match take_live(&mut c).await {
                Next::Send(b) => return Some((Ok(b), c)),
                Next::Wait => {}
                Next::End => return None,
            }
        }
    })))
}
