//! Authentication middleware, run before any extractor parses the body: an unauthenticated
//! request learns nothing about its body's validity. Client routes take the client token
//! (`Bearer <token>` or the bare token); `/workers/register` takes the join token; every other
//! worker route takes the per-worker token, and its identity is handed to the handler.

use super::error::ApiError;
use super::state::AppState;
use crate::actors::registry::{AuthenticateWorker, WorkerIdentity};
use crate::settings::Secret;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, Error, HttpMessage};

/// Header a worker process sends with the instance id it registered with.
pub const INSTANCE_HEADER: &str = "X-Loopd-Instance";

fn presented(req: &ServiceRequest) -> Option<String> {
    let v = req.headers().get("Authorization")?.to_str().ok()?.trim();
    // The scheme name is case-insensitive (RFC 9110); a bare token has no scheme.
    let t = match v.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => v,
    };
    (!t.is_empty()).then(|| t.to_string())
}

fn state(req: &ServiceRequest) -> Result<web::Data<AppState>, Error> {
    req.app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(|| ApiError::internal("application state missing").into())
}

/// Constant-time equality of a presented token and the configured one.
fn matches(given: &str, want: &Secret) -> bool {
    let (a, b) = (given.as_bytes(), want.expose().as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Requires the client token when one is configured.
pub async fn client(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let st = state(&req)?;
    if let Some(want) = &st.client_token {
        let ok = presented(&req).is_some_and(|t| matches(&t, want));
        if !ok {
            return Err(ApiError::unauthorized("missing or invalid token: set LOOPD_TOKEN").into());
        }
    }
    next.call(req).await
}

/// Requires the worker join token.
pub async fn join(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let st = state(&req)?;
    let ok = match &st.join_token {
        Some(want) => presented(&req).is_some_and(|t| matches(&t, want)),
        // No join token configured: registration is closed.
        None => false,
    };
    if !ok {
        return Err(ApiError::unauthorized("missing or invalid join token").into());
    }
    next.call(req).await
}

async fn authenticate(
    req: &ServiceRequest,
    path_worker: Option<String>,
) -> Result<WorkerIdentity, Error> {
    let st = state(req)?;
    let token = presented(req).ok_or_else(|| ApiError::unauthorized("missing worker token"))?;
    let instance = req
        .headers()
        .get(INSTANCE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let who = st
        .registry
        .send(AuthenticateWorker {
            token,
            path_worker,
            instance,
        })
        .await
        .map_err(ApiError::from)?
        .map_err(ApiError::from)?;
    Ok(who)
}

/// Requires a worker token whose worker is the `{id}` of the path.
pub async fn worker_self(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let path_worker = Some(req.match_info().get("id").unwrap_or_default().to_string());
    let who = authenticate(&req, path_worker).await?;
    req.extensions_mut().insert(who);
    next.call(req).await
}

/// Requires any valid worker token (step routes check the lease themselves).
pub async fn worker(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let who = authenticate(&req, None).await?;
    req.extensions_mut().insert(who);
    next.call(req).await
}
