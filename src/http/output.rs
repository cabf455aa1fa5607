//! `GET /runs/{id}/output` (SSE): the run's output, its steps' outputs in step order, from a
//! cursor, then live. Positions are run-wide and counted in UTF-16 code units (what a
//! JavaScript string's `length` counts): a frame's `offset` is where its first character
//! starts, and `offset + content.length` is its `id:` and the next frame's `offset`. A cursor
//! inside a character (the second half of a surrogate pair) starts at that character.

use super::error::ApiError;
use super::extract::Id;
use super::state::AppState;
use super::streams::{last_event_id, require_run, sse, wait};
use crate::api::OutputFrame;
use crate::db::{self, DbError};
use crate::domain::RunStatus;
use crate::output_store::{utf16_units, utf8_boundary, Seek};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::stream;
use tokio::sync::watch;

/// Output bytes per frame: as large as the chunks workers post, so a reader keeps up with them.
const CHUNK: usize = 256 * 1024;

#[derive(serde::Deserialize)]
pub struct OutputQuery {
    offset: Option<u64>,
}

/// A place in the run's output.
#[derive(Debug, Clone)]
struct At {
    step_id: String,
    /// Run-wide units before the step.
    start: u64,
    /// Byte in the step's output.
    byte: u64,
    /// Run-wide units before `byte`.
    unit: u64,
}

struct OutputCursor {
    st: AppState,
    run_id: String,
    /// Run-wide units sent so far (the `id:` of the last frame).
    offset: u64,
    /// Where the last frame ended, so that the next read need not count from the step's start.
    at: Option<At>,
    rx: watch::Receiver<u64>,
}

/// What a read of the output stream found at its cursor.
struct Located {
    /// The place of the cursor, when output is held there.
    at: Option<At>,
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
    hint: Option<&At>,
) -> Result<Located, DbError> {
    let io = |e: crate::output_store::OutputError| DbError::Join(e.to_string());
    let run = db::runs::require(c, run_id)?;
    let ended = run.run_status().is_some_and(RunStatus::is_terminal);
    let steps = db::steps::for_run(c, run_id)?;
    let mut start = 0u64;
    for s in &steps {
        let size = st.output.units(run_id, &s.id).map_err(io)?;
        if offset < start + size {
            let known = hint.filter(|h| h.step_id == s.id && h.start == start && h.unit == offset);
            let at = match known {
                Some(h) => Some(h.clone()),
                None => match st.output.seek(run_id, &s.id, offset - start).map_err(io)? {
                    Seek::Found(byte, unit) => Some(At {
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

/// One frame of output read at `at`, and where it ends; `None` when `chunk` is only the start
/// of a character still being written. Once the run has ended (`whole`), bytes that will never
/// make a character are sent as they are (replacement characters).
fn frame(at: &At, chunk: &[u8], whole: bool) -> Option<(Bytes, At)> {
    // Never split a character: an incomplete one at the end waits for the next frame.
    let cut = match utf8_boundary(chunk) {
        0 if whole || chunk.len() >= 4 => chunk.len(),
        0 => return None,
        n => n,
    };
    let piece = &chunk[..cut];
    let end = at.unit + utf16_units(piece);
    let f = OutputFrame {
        step_id: at.step_id.clone(),
        offset: at.unit,
        content: String::from_utf8_lossy(piece).into_owned(),
    };
    let data = serde_json::to_string(&f).unwrap_or_default();
    let msg = format!("event: output\ndata: {data}\nid: {end}\n\n");
    let next = At {
        step_id: at.step_id.clone(),
        start: at.start,
        byte: at.byte + cut as u64,
        unit: end,
    };
    Some((Bytes::from(msg), next))
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
    let cursor = OutputCursor {
        st: st.get_ref().clone(),
        run_id,
        offset,
        at: None,
        rx,
    };
    Ok(sse(stream::unfold(cursor, |mut c| async move {
        loop {
            let (st, rid, off, hint) = (c.st.clone(), c.run_id.clone(), c.offset, c.at.take());
            let read =
                c.st.db
                    .run(move |conn| {
                        let found = locate(conn, &st, &rid, off, hint.as_ref())?;
                        let chunk = match &found.at {
                            Some(at) => st
                                .output
                                .read(&rid, &at.step_id, at.byte, CHUNK)
                                .map_err(|e| DbError::Join(e.to_string()))?,
                            None => Vec::new(),
                        };
                        Ok::<_, DbError>((found, chunk))
                    })
                    .await;
            match read {
                Ok((found, chunk)) => match found.at {
                    Some(at) => match frame(&at, &chunk, found.ended) {
                        Some((msg, next)) if !chunk.is_empty() => {
                            c.offset = next.unit;
                            c.at = Some(next);
                            return Some((Ok(msg), c));
                        }
                        _ => c.at = Some(at),
                    },
                    // Nothing after the cursor and the run has ended: all output was sent.
                    None if found.ended => return None,
                    None => {}
                },
                Err(e) => tracing::warn!(error = %e, "output stream read failed"),
            }
            match wait(&mut c.rx).await {
                Ok(true) => continue,
                Ok(false) => return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), c)),
                Err(()) => return None,
            }
        }
    })))
}
