//! `/health` (the process is up), `/ready` (migrations ran and the actors are up) and
//! `/metrics` (Prometheus text).

use super::error::ApiError;
use super::state::AppState;
use crate::actors::registry::CountOnline;
use crate::db::{self, DbError};
use crate::metrics::{self, Snapshot};
use actix_web::{web, HttpResponse};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// Ready = started, and the database answers (a controller whose Postgres is down is up,
/// but not ready).
pub async fn ready(st: web::Data<AppState>) -> HttpResponse {
    let not_ready = |why: &str| {
        HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"error": why, "code": "not_ready"}))
    };
    if !st.ready.load(Ordering::Acquire) {
        return not_ready("starting");
    }
    match st.db.run(|c| c.now_ms()).await {
        Ok(_) => HttpResponse::Ok().json(serde_json::json!({"status": "ready"})),
        Err(e) => {
            tracing::warn!(error = %e, "not ready: the database does not answer");
            not_ready("the database does not answer")
        }
    }
}

/// Set once a worker has registered with its controller (`app::runners::join_controller`).
#[derive(Clone, Default)]
pub struct Joined(pub Arc<AtomicBool>);

/// A worker is ready once it has registered with its controller (it registers in the
/// background, retrying until the controller answers: until then it only serves `/health`).
pub async fn worker_ready(joined: web::Data<Joined>) -> HttpResponse {
    if !joined.0.load(Ordering::Acquire) {
        return HttpResponse::ServiceUnavailable().json(serde_json::json!({
            "error": "not registered with the controller yet",
            "code": "not_ready"
        }));
    }
    HttpResponse::Ok().json(serde_json::json!({"status": "ready"}))
}

pub async fn metrics(st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let (runs_by_status, steps_by_phase_status, accounts) = st
        .db
        .run(|c| {
            let now = c.now_ms()?;
            let accounts = db::accounts::list(c)?
                .into_iter()
                .map(|a| {
                    let paused = a.state.paused(now);
                    (a.account, a.state.limit as i64, a.in_use, paused)
                })
                .collect();
            Ok::<_, DbError>((
                db::runs::count_by_status(c)?,
                db::steps::count_by_phase_status(c)?,
                accounts,
            ))
        })
        .await?;
    let workers_online = st.registry.send(CountOnline).await?? as i64;
    let completion_batches = st.db.batcher().map(|b| b.counts());
    let snap = Snapshot {
        workers_online,
        runs_by_status,
        steps_by_phase_status,
        completion_batches,
        accounts,
    };
    Ok(HttpResponse::Ok()
        .content_type(metrics::CONTENT_TYPE)
        .body(st.metrics.render(&snap)))
}
