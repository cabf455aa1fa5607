//! Authentication middleware, run before any extractor parses the body: an unauthenticated
//! request learns nothing about its body's validity. Client routes take a client token
//! (`Bearer <token>` or the bare token) that holds the route's scope — `read`, `submit` or
//! `admin` — and hand its [`Principal`] to the handler; `/workers/register` takes the join
//! token; every other worker route takes the per-worker token, and its identity is handed
//! to the handler. Missing or unknown token: 401; known token without the scope: 403.

use super::error::ApiError;
use super::state::AppState;
use crate::actors::registry::{AuthenticateWorker, WorkerIdentity};
use crate::domain::access::{Scope, Scopes};
use crate::settings::{ClientToken, Secret};
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, Error, HttpMessage};
use subtle::ConstantTimeEq;

/// Header a worker process sends with the instance id it registered with.
pub const INSTANCE_HEADER: &str = "X-Loopd-Instance";

/// Who made a client request: the token's name (`None` when the API is open) and scopes.
#[derive(Debug, Clone)]
pub struct Principal {
    pub name: Option<String>,
    pub scopes: Scopes,
}

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

/// Constant-time equality of a presented token and a configured one.
fn matches(given: &str, want: &Secret) -> bool {
    given.as_bytes().ct_eq(want.expose().as_bytes()).into()
}

/// The client token `given` is, if any; every configured token is compared, so the time
/// taken does not say which one matched.
fn find<'a>(tokens: &'a [ClientToken], given: &str) -> Option<&'a ClientToken> {
    tokens.iter().fold(None, |found, t| {
        if matches(given, &t.secret) {
            Some(t)
        } else {
            found
        }
    })
}

/// Who is asking, or 401. An open API (no client token configured) grants what the unnamed
/// token would.
fn principal(req: &ServiceRequest, tokens: &[ClientToken]) -> Result<Principal, ApiError> {
    if tokens.is_empty() {
        return Ok(Principal {
            name: None,
            scopes: Scopes::unnamed(),
        });
    }
    presented(req)
        .and_then(|t| find(tokens, &t))
        .map(|t| Principal {
            name: Some(t.name.clone()),
            scopes: t.scopes,
        })
        .ok_or_else(|| ApiError::unauthorized("missing or invalid token: set LOOPD_TOKEN"))
}

async fn client(
    scope: Scope,
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let st = state(&req)?;
    let who = principal(&req, &st.clients)?;
    if !who.scopes.has(scope) {
        return Err(ApiError::forbidden(format!(
            "this token may not do this: it needs the '{scope}' scope (it has: {})",
            who.scopes.names().join(", ")
        ))
        .into());
    }
    req.extensions_mut().insert(who);
    next.call(req).await
}

/// Requires a client token with the `read` scope (when client tokens are configured).
pub async fn read(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    client(Scope::Read, req, next).await
}

/// Requires a client token with the `submit` scope.
pub async fn submit(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    client(Scope::Submit, req, next).await
}

/// Requires a client token with the `admin` scope.
pub async fn admin(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    client(Scope::Admin, req, next).await
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
