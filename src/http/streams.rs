//! The two live streams of a run (SSE). Both replay from a cursor and then follow the event
//! hub: on every wake-up they re-read from their cursor, so nothing is skipped or repeated.
//! `/events` (here) uses the run's event numbers as cursor (`Last-Event-ID`, else
//! `after=<ms>`); `/output` (in `output.rs`) a position in the run's output.

use super::error::ApiError;
use super::extract::Id;
use super::state::AppState;
use crate::api::EventFrame;
use crate::db::{self, models::EventRow, DbError};
use crate::domain::RunStatus;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::stream;
use std::time::Duration;
use tokio::sync::watch;

pub(super) const KEEP_ALIVE: Duration = Duration::from_secs(15);
const BATCH: i64 = 500;

#[derive(serde::Deserialize)]
pub struct EventsQuery {
    after: Option<i64>,
}

pub(super) fn last_event_id(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get("Last-Event-ID")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

pub(super) fn sse(
    body: impl futures_util::Stream<Item = Result<Bytes, actix_web::Error>> + 'static,
) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body)
}

pub(super) async fn require_run(st: &AppState, id: &str) -> Result<(), ApiError> {
    let id = id.to_string();
    st.db
        .run(move |c| db::runs::get(c, &id))
        .await?
        .map(|_| ())
        .ok_or_else(|| ApiError::not_found("run"))
}

/// Waits for a change of the run, or the keep-alive period. False when the hub went away.
pub(super) async fn wait(rx: &mut watch::Receiver<u64>) -> Result<bool, ()> {
    match tokio::time::timeout(KEEP_ALIVE, rx.changed()).await {
        Ok(Ok(())) => Ok(true),
        Ok(Err(_)) => Err(()),
        Err(_) => Ok(false),
    }
}

fn frame(e: &EventRow) -> String {
    let payload = serde_json::from_str(&e.payload_json).unwrap_or(serde_json::Value::Null);
    let f = EventFrame {
        id: e.id.clone(),
        run_id: e.run_id.clone().unwrap_or_default(),
        step_id: e.step_id.clone(),
        event_type: e.event_type.clone(),
        timestamp: e.created_at,
        payload,
    };
    let data = serde_json::to_string(&f).unwrap_or_default();
    format!(
        "event: {}\ndata: {data}\nid: {}\n\n",
        e.event_type,
        e.run_seq.unwrap_or(0)
    )
}

struct EventsCursor {
    st: AppState,
    run_id: String,
    seq: i64,
    after_ms: Option<i64>,
    rx: watch::Receiver<u64>,
}

/// `GET /runs/{id}/events`
pub async fn events(
    st: web::Data<AppState>,
    id: Id,
    q: web::Query<EventsQuery>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let run_id = id.0;
    // Known runs only: a subscription stays in the hub until its run is next notified.
    require_run(&st, &run_id).await?;
    let rx = st.hub.subscribe(&run_id);
    let seq = match last_event_id(&req) {
        Some(v) => v.parse::<i64>().map_err(|_| {
            ApiError::bad_request("invalid_cursor", "Last-Event-ID must be an event number")
        })?,
        None => 0,
    };
    let cursor = EventsCursor {
        st: st.get_ref().clone(),
        run_id,
        seq,
        after_ms: if seq == 0 { q.after } else { None },
        rx,
    };
    Ok(sse(stream::unfold(cursor, |mut c| async move {
        loop {
            let (rid, seq, after) = (c.run_id.clone(), c.seq, c.after_ms);
            let read =
                c.st.db
                    .run(move |conn| next_events(conn, &rid, seq, after))
                    .await;
            let rows = match read {
                Ok(Batch::Events(rows)) => rows,
                Ok(Batch::Ended) => return None,
                Err(e) => {
                    tracing::warn!(error = %e, "event stream read failed");
                    Vec::new()
                }
            };
            if !rows.is_empty() {
                let mut out = String::new();
                for e in &rows {
                    out.push_str(&frame(e));
                    c.seq = e.run_seq.unwrap_or(c.seq);
                }
                // `after` only picks where the replay starts; from here on the cursor rules.
                c.after_ms = None;
                return Some((Ok(Bytes::from(out)), c));
            }
            match wait(&mut c.rx).await {
                Ok(true) => continue,
                Ok(false) => return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), c)),
                Err(()) => return None,
            }
        }
    })))
}

/// What an events stream reads next.
enum Batch {
    Events(Vec<EventRow>),
    /// Nothing after the cursor and the run has ended: its terminal event has been sent.
    Ended,
}

/// The events after the cursor; when there are none, whether the run has ended. The run's
/// status and its terminal event are written in one transaction, so an ended run has nothing
/// more to send; a retried run is not ended, so its stream goes on to its new end. The status
/// is read first: each statement sees what was committed when it ran (SQLite outside a
/// transaction, Postgres read committed), so events read after an ended status include the
/// terminal event, whereas the other order could miss it when the run ends in between.
fn next_events(
    c: &mut db::Conn,
    run_id: &str,
    seq: i64,
    after_ms: Option<i64>,
) -> Result<Batch, DbError> {
    let ended = db::runs::get(c, run_id)?.is_none_or(|r| {
        r.status
            .parse::<RunStatus>()
            .is_ok_and(RunStatus::is_terminal)
    });
    let rows = db::events::after(c, run_id, seq, after_ms, BATCH)?;
    Ok(if rows.is_empty() && ended {
        Batch::Ended
    } else {
        Batch::Events(rows)
    })
}
