//! Worker API routes (API.md §2): register, heartbeat, claim, and per-step writes (output,
//! events, artifacts, completion); plus the client's `GET /workers` and `DELETE /workers/{id}`.
//! Authentication happened in middleware; handlers get the worker's identity.

use super::error::{payload_error, ApiError};
use super::extract::{Id, Name};
use super::state::AppState;
use super::views;
use crate::actors::lease::{
    authorize, AppendOutput, ClaimStep, CompleteStep, LeaseError, ReadArtifact, RecordStepEvent,
    ReleaseLease, StoreArtifact,
};
use crate::actors::registry::{
    Heartbeat, ListWorkers, RegisterWorker, RevokeWorker, WorkerIdentity,
};
use crate::api::{
    ArtifactUploadQuery, ClaimRequest, CompleteRequest, CompleteResponse, HeartbeatRequest,
    OutputChunk, RegisterRequest, ReleaseRequest, StepEventRequest, WorkersEnvelope,
};
use crate::artifacts::validate_name;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use std::time::Duration;

/// Whether the request says its body is JSON.
fn is_json(req: &actix_web::HttpRequest) -> bool {
    req.headers()
        .get("Content-Type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"))
}

/// The longest long poll a claim may ask for.
const MAX_WAIT_MS: u64 = 30_000;

pub async fn register(
    st: web::Data<AppState>,
    body: web::Json<RegisterRequest>,
) -> Result<HttpResponse, ApiError> {
    crate::api::validate::register(&body)?;
    let r = st
        .registry
        .send(RegisterWorker(body.into_inner()))
        .await??;
    Ok(HttpResponse::Created().json(r))
}

pub async fn heartbeat(
    st: web::Data<AppState>,
    who: web::ReqData<WorkerIdentity>,
    body: web::Json<HeartbeatRequest>,
) -> Result<HttpResponse, ApiError> {
    let r = st
        .registry
        .send(Heartbeat {
            worker_id: who.worker_id.clone(),
            request: body.into_inner(),
        })
        .await??;
    Ok(HttpResponse::Ok().json(r))
}

pub async fn claim(
    st: web::Data<AppState>,
    who: web::ReqData<WorkerIdentity>,
    payload: web::Payload,
    http: actix_web::HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let body = read_capped(payload, st.limits.json_body_bytes).await?;
    // The body is optional: empty means "answer now"; otherwise a JSON object.
    let req: ClaimRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ClaimRequest::default()
    } else if !is_json(&http) {
        return Err(ApiError::new(
            actix_web::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected Content-Type: application/json",
        ));
    } else {
        let bad =
            |e: String| ApiError::bad_request("invalid_json", format!("invalid JSON body: {e}"));
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| bad(e.to_string()))?;
        if !v.is_object() {
            return Err(bad("expected a JSON object".into()));
        }
        serde_json::from_value(v).map_err(|e| bad(e.to_string()))?
    };
    let wait = req.wait_ms.unwrap_or(0);
    if wait > MAX_WAIT_MS {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!("wait_ms must be at most {MAX_WAIT_MS}"),
        ));
    }
    let who = who.into_inner();
    let got = st
        .lease
        .send(ClaimStep {
            worker_id: who.worker_id,
            labels: who.labels,
            wait: Duration::from_millis(wait),
        })
        .await??;
    Ok(match got {
        Some(a) => HttpResponse::Ok().json(a),
        None => HttpResponse::NoContent().finish(),
    })
}

/// Reads a request body of at most `cap` bytes, refusing more with 413 as soon as it is seen.
async fn read_capped(mut payload: web::Payload, cap: usize) -> Result<web::BytesMut, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(payload_error)?;
        if body.len() + chunk.len() > cap {
            return Err(payload_error(actix_web::error::PayloadError::Overflow));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A JSON body under its own cap (output chunks may be larger than other JSON bodies).
async fn capped_json<T: serde::de::DeserializeOwned>(
    req: &HttpRequest,
    payload: web::Payload,
    cap: usize,
) -> Result<T, ApiError> {
    let json = req
        .mime_type()
        .ok()
        .flatten()
        .is_some_and(|m| m.subtype() == "json" || m.suffix().is_some_and(|s| s == "json"));
    if !json {
        return Err(ApiError::new(
            actix_web::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected Content-Type: application/json",
        ));
    }
    let body = read_capped(payload, cap).await?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("invalid JSON body: {e}")))
}

pub async fn output(
    st: web::Data<AppState>,
    who: web::ReqData<WorkerIdentity>,
    id: Id,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let b: OutputChunk = capped_json(&req, payload, st.limits.output_chunk_bytes).await?;
    let r = st
        .lease
        .send(AppendOutput {
            worker_id: who.worker_id.clone(),
            step_id: id.0,
            epoch: b.epoch,
            offset: b.offset,
            content: b.content,
        })
        .await?;
    match r {
        Ok(ack) => Ok(HttpResponse::Accepted().json(ack)),
        // The writer must know where to resume: say how much is held.
        Err(LeaseError::OffsetGap(n)) => Ok(HttpResponse::Conflict().json(serde_json::json!({
            "error": format!("output offset is past the {n} bytes held; resend from {n}"),
            "code": "offset_gap",
            "next_offset": n,
        }))),
        Err(e) => Err(e.into()),
    }
}

pub async fn event(
    st: web::Data<AppState>,
    who: web::ReqData<WorkerIdentity>,
    id: Id,
    body: web::Json<StepEventRequest>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    st.lease
        .send(RecordStepEvent {
            worker_id: who.worker_id.clone(),
            step_id: id.0,
            epoch: b.epoch,
            event_type: b.event_type,
            payload: b.payload,
        })
        .await??;
    Ok(HttpResponse::Accepted().json(serde_json::json!({})))
}

/// `PUT /steps/{id}/artifacts/{name}?epoch=N` with the raw bytes. Before a byte of the body
/// is read: the worker token (middleware), the declared size (413), the name, a place among
/// the worker's uploads in flight (429) and the lease (409/403/404). A body without a
/// `Content-Length` is cut off at the cap as it arrives.
pub async fn artifact(
    st: web::Data<AppState>,
    who: web::ReqData<WorkerIdentity>,
    id: Id,
    name: Name,
    q: web::Query<ArtifactUploadQuery>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let cap = st.limits.artifact_bytes;
    if declared_length(&req)?.is_some_and(|n| n > cap as u64) {
        return Err(too_large(cap));
    }
    let (step_id, name) = (id.0, name.0);
    validate_name(&name).map_err(|e| ApiError::bad_request("invalid_request", e.to_string()))?;
    let worker_id = who.worker_id.clone();
    let _permit = st.uploads.try_take(&worker_id).ok_or_else(|| {
        ApiError::new(
            actix_web::http::StatusCode::TOO_MANY_REQUESTS,
            "too_many_uploads",
            format!(
                "this worker has {} artifact uploads in flight already; retry when one ends",
                st.limits.artifact_uploads_per_worker
            ),
        )
    })?;
    let (sid, wid, epoch) = (step_id.clone(), worker_id.clone(), q.epoch);
    st.db
        .run(move |c| authorize(c, &sid, &wid, epoch).map(|_| ()))
        .await?;
    let body = read_capped(payload, cap).await?;
    let r = st
        .lease
        .send(StoreArtifact {
            worker_id,
            step_id,
            epoch: q.epoch,
            name,
            bytes: body.freeze(),
        })
        .await??;
    Ok(HttpResponse::Created().json(r))
}

/// The request's `Content-Length`, if it has one; a malformed one is a 400.
fn declared_length(req: &HttpRequest) -> Result<Option<u64>, ApiError> {
    match req.headers().get(actix_web::http::header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| ApiError::bad_request("invalid_body", "malformed Content-Length")),
    }
}

fn too_large(cap: usize) -> ApiError {
    ApiError::new(
        actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the artifact is larger than limits.artifact_bytes ({cap} bytes)"),
    )
}

pub async fn complete(
    st: web::Data<AppState>,
    who: web::ReqData<WorkerIdentity>,
    id: Id,
    body: web::Json<CompleteRequest>,
) -> Result<HttpResponse, ApiError> {
    let who = who.into_inner();
    let next = st
        .lease
        .send(CompleteStep {
            worker_id: who.worker_id,
            step_id: id.0,
            request: body.into_inner(),
            labels: who.labels,
        })
        .await??;
    Ok(HttpResponse::Ok().json(CompleteResponse { next }))
}

pub async fn list(st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let rows = st.registry.send(ListWorkers).await??;
    let workers = rows.iter().map(|(w, l)| views::worker(w, l)).collect();
    let (list, now) = st
        .db
        .run(|c| -> Result<_, crate::db::DbError> {
            Ok((crate::db::accounts::list(c)?, c.now_ms()?))
        })
        .await?;
    let accounts = list.iter().map(|a| views::account(a, now)).collect();
    Ok(HttpResponse::Ok().json(WorkersEnvelope { workers, accounts }))
}

pub async fn revoke(st: web::Data<AppState>, id: Id) -> Result<HttpResponse, ApiError> {
    st.registry.send(RevokeWorker(id.0)).await??;
    Ok(HttpResponse::NoContent().finish())
}

/// `GET /steps/{id}/artifacts/{name}?epoch=N`: a lease holder reads an artifact of its run
/// (the checkpoint bundle it restores from).
pub async fn download(
    st: web::Data<AppState>,
    who: web::ReqData<WorkerIdentity>,
    id: Id,
    name: Name,
    q: web::Query<ArtifactUploadQuery>,
) -> Result<HttpResponse, ApiError> {
    let (step_id, name) = (id.0, name.0);
    let bytes = st
        .lease
        .send(ReadArtifact {
            worker_id: who.worker_id.clone(),
            step_id,
            epoch: q.epoch,
            name,
        })
        .await??;
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .body(bytes))
}

/// `POST /steps/{id}/release`: the worker hands its lease back (drain); no retry is used.
pub async fn release(
    st: web::Data<AppState>,
    who: web::ReqData<WorkerIdentity>,
    id: Id,
    body: web::Json<ReleaseRequest>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    st.lease
        .send(ReleaseLease {
            worker_id: who.worker_id.clone(),
            step_id: id.0,
            epoch: b.epoch,
            reason: b.reason.unwrap_or_else(|| "released by worker".into()),
            pause_ms: b.retry_after_ms,
        })
        .await??;
    Ok(HttpResponse::Ok().json(serde_json::json!({})))
}
