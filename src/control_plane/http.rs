//! The worker's control plane over the controller's worker API (API.md §2): registration with
//! the join token, then every call with the per-worker token and the process's instance id.
//! HTTP statuses become [`PlaneError`]s; the runner decides what to retry.
//!
//! A worker may know several controllers (active-active on one database, or one
//! load-balanced URL): it talks to one at a time, and moves to the next when the one it talks
//! to cannot be reached or answers that it is unavailable (502, 503, 504: stopping, or
//! behind a proxy that lost it). A request that never reached a controller (the connection
//! was refused) is sent to the next one at once; any other failure is returned as
//! [`PlaneError::Unavailable`] and the caller's retry goes to the next one. Every call a
//! worker makes is safe to repeat (the resend rules), and any controller serves every call.

use super::{ControlPlane, PlaneError};
use crate::api::{
    ArtifactRef, Assignment, ClaimRequest, CompleteRequest, CompleteResponse, ErrorBody,
    HeartbeatRequest, HeartbeatResponse, HeldLease, LeaseVerdict, OutputAck, OutputChunk,
    RegisterRequest, RegisterResponse, ReleaseRequest, StepEventRequest,
};
use crate::domain::WorkerStatus;
use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use reqwest::StatusCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Header carrying the worker process's instance id.
pub const INSTANCE_HEADER: &str = "X-Loopd-Instance";

#[derive(Debug, Clone)]
struct Identity {
    worker_id: String,
    token: String,
}

/// The controllers a worker knows, and the one it talks to now.
#[derive(Debug)]
struct Controllers {
    bases: Vec<String>,
    current: AtomicUsize,
}

impl Controllers {
    fn new(bases: &[String]) -> Controllers {
        let bases: Vec<String> = bases
            .iter()
            .map(|b| b.trim().trim_end_matches('/').to_string())
            .filter(|b| !b.is_empty())
            .collect();
        Controllers {
            bases,
            current: AtomicUsize::new(0),
        }
    }

    /// The controller talked to now, and its place in the list.
    fn current(&self) -> (usize, &str) {
        let i = self.current.load(Ordering::Acquire) % self.bases.len().max(1);
        (i, self.bases.get(i).map_or("", String::as_str))
    }

    /// Moves on from controller `from` (unless another call already did).
    fn next_after(&self, from: usize) {
        let n = self.bases.len();
        if n > 1 {
            let to = (from + 1) % n;
            if self
                .current
                .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                tracing::warn!(from = %self.bases[from], to = %self.bases[to], "moving to the next controller");
            }
        }
    }

    fn len(&self) -> usize {
        self.bases.len()
    }
}

/// Whether an answer says "try another controller" (this one is stopping, or the proxy in
/// front of it lost it).
fn moves_on(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// Sends `build(base)` to the current controller; a connection refused is sent to the next
/// one at once (once round the list), and a failure or an answer that says to move on makes
/// the next call go to the next controller.
async fn send_to(
    controllers: &Controllers,
    build: impl Fn(&str) -> reqwest::RequestBuilder,
) -> Result<reqwest::Response, PlaneError> {
    let mut tries = 0;
    loop {
        let (i, base) = controllers.current();
        match build(base).send().await {
            Ok(resp) => {
                if moves_on(resp.status()) {
                    controllers.next_after(i);
                }
                return Ok(resp);
            }
            Err(e) => {
                controllers.next_after(i);
                tries += 1;
                if !e.is_connect() || tries >= controllers.len() {
                    return Err(unavailable(e));
                }
            }
        }
    }
}

/// A registered worker's connection to its controllers.
#[derive(Clone)]
pub struct HttpPlane {
    client: reqwest::Client,
    controllers: Arc<Controllers>,
    instance: String,
    who: Arc<RwLock<Identity>>,
    join_token: String,
    registration: RegisterRequest,
    /// What the controller told us at registration.
    pub heartbeat_interval_ms: u64,
    pub lease_ttl_ms: u64,
    pub worker_offline_after_ms: Option<u64>,
}

fn unavailable(e: reqwest::Error) -> PlaneError {
    PlaneError::Unavailable(e.to_string())
}

/// Maps a non-success answer to a PlaneError.
async fn refusal(resp: reqwest::Response) -> PlaneError {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let body: Option<ErrorBody> = serde_json::from_str(&text).ok();
    let code = body.as_ref().map(|b| b.code.as_str()).unwrap_or("");
    let msg = body
        .as_ref()
        .map(|b| b.error.clone())
        .unwrap_or_else(|| text.clone());
    match (status, code) {
        (StatusCode::CONFLICT, "stale_lease") | (StatusCode::FORBIDDEN, _) => PlaneError::Stale,
        (StatusCode::CONFLICT, "offset_gap") => {
            let next = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("next_offset").and_then(|n| n.as_u64()))
                .unwrap_or(0);
            PlaneError::OffsetGap(next)
        }
        (StatusCode::CONFLICT, "worker_offline" | "duplicate_worker")
        | (StatusCode::UNAUTHORIZED, _) => PlaneError::Gone(msg),
        (StatusCode::NOT_FOUND, _) => PlaneError::NotFound(msg),
        (StatusCode::SERVICE_UNAVAILABLE, "artifact_store_unavailable") => PlaneError::Store(msg),
        (s, _) if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
            PlaneError::Unavailable(format!("{s}: {msg}"))
        }
        (s, _) => PlaneError::Rejected(format!("{s}: {msg}")),
    }
}

async fn register_once(
    client: &reqwest::Client,
    controllers: &Controllers,
    join_token: &str,
    req: &RegisterRequest,
) -> Result<RegisterResponse, PlaneError> {
    let resp = send_to(controllers, |base| {
        client
            .post(format!("{base}/workers/register"))
            .bearer_auth(join_token)
            .timeout(Duration::from_secs(30))
            .json(req)
    })
    .await?;
    if resp.status() != StatusCode::CREATED {
        return Err(refusal(resp).await);
    }
    resp.json().await.map_err(unavailable)
}

impl HttpPlane {
    /// Registers with one of the controllers `bases` (the first that answers, from the
    /// first) and returns the connected plane.
    pub async fn register(
        bases: &[String],
        join_token: &str,
        req: RegisterRequest,
    ) -> Result<HttpPlane, PlaneError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(unavailable)?;
        let controllers = Arc::new(Controllers::new(bases));
        if controllers.len() == 0 {
            return Err(PlaneError::Rejected("no controller URL".into()));
        }
        let r = register_once(&client, &controllers, join_token, &req).await?;
        Ok(HttpPlane {
            client,
            controllers,
            instance: req.instance_id.clone().unwrap_or_default(),
            who: Arc::new(RwLock::new(Identity {
                worker_id: r.worker_id,
                token: r.token,
            })),
            join_token: join_token.to_string(),
            registration: req,
            heartbeat_interval_ms: r.heartbeat_interval_ms,
            lease_ttl_ms: r.lease_ttl_ms,
            worker_offline_after_ms: r.worker_offline_after_ms,
        })
    }

    /// Registers again after the controller forgot this worker (it was marked offline or
    /// revoked): a fresh worker id and token, retried until the controller answers.
    pub async fn reregister(&self) {
        // No limit on attempts and every error is retried: only an answer ends it.
        let policy = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(250))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times();
        let register = || {
            register_once(
                &self.client,
                &self.controllers,
                &self.join_token,
                &self.registration,
            )
        };
        let registered = register
            .retry(policy)
            .sleep(tokio::time::sleep)
            .notify(|e, _| tracing::warn!(error = %e, "cannot register again; retrying"))
            .await;
        if let Ok(r) = registered {
            tracing::info!(worker_id = %r.worker_id, "registered again");
            let mut who = match self.who.write() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            *who = Identity {
                worker_id: r.worker_id,
                token: r.token,
            };
        }
    }

    fn identity(&self) -> Identity {
        match self.who.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The controller this worker talks to now.
    pub fn controller(&self) -> String {
        self.controllers.current().1.to_string()
    }

    /// Sends a request built by `build` (from the request to `path`) to the current controller,
    /// moving on as [`send_to`] says.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        timeout: Duration,
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, PlaneError> {
        let who = self.identity();
        send_to(&self.controllers, |base| {
            build(
                self.client
                    .request(method.clone(), format!("{base}{path}"))
                    .bearer_auth(&who.token)
                    .header(INSTANCE_HEADER, &self.instance)
                    .timeout(timeout),
            )
        })
        .await
    }

    async fn post_json<T: serde::Serialize>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<reqwest::Response, PlaneError> {
        let resp = self
            .send(reqwest::Method::POST, path, Duration::from_secs(30), |r| {
                r.json(body)
            })
            .await?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(refusal(resp).await)
        }
    }
}

#[async_trait::async_trait]
impl ControlPlane for HttpPlane {
    fn worker_id(&self) -> String {
        self.identity().worker_id
    }

    async fn rejoin(&self) {
        self.reregister().await
    }

    async fn claim(&self, wait: Duration) -> Result<Option<Assignment>, PlaneError> {
        let id = self.worker_id();
        let body = ClaimRequest {
            wait_ms: Some(wait.as_millis() as u64),
        };
        let resp = self
            .send(
                reqwest::Method::POST,
                &format!("/workers/{id}/claim"),
                wait + Duration::from_secs(15),
                |r| r.json(&body),
            )
            .await?;
        match resp.status() {
            StatusCode::NO_CONTENT => Ok(None),
            StatusCode::OK => Ok(Some(resp.json().await.map_err(unavailable)?)),
            _ => Err(refusal(resp).await),
        }
    }

    async fn heartbeat(
        &self,
        status: WorkerStatus,
        leases: Vec<HeldLease>,
        metrics: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Vec<LeaseVerdict>, PlaneError> {
        let id = self.worker_id();
        let resp = self
            .post_json(
                &format!("/workers/{id}/heartbeat"),
                &HeartbeatRequest {
                    status,
                    metrics,
                    leases,
                },
            )
            .await?;
        let r: HeartbeatResponse = resp.json().await.map_err(unavailable)?;
        Ok(r.leases)
    }

    async fn append_output(
        &self,
        step_id: &str,
        epoch: i64,
        offset: u64,
        content: String,
    ) -> Result<u64, PlaneError> {
        let resp = self
            .post_json(
                &format!("/steps/{step_id}/output"),
                &OutputChunk {
                    epoch,
                    offset,
                    content,
                },
            )
            .await?;
        let ack: OutputAck = resp.json().await.map_err(unavailable)?;
        Ok(ack.next_offset)
    }

    async fn post_event(
        &self,
        step_id: &str,
        epoch: i64,
        event_type: &str,
        payload: serde_json::Value,
    ) -> Result<(), PlaneError> {
        let body = StepEventRequest {
            epoch,
            event_type: event_type.into(),
            payload,
        };
        self.post_json(&format!("/steps/{step_id}/events"), &body)
            .await?;
        Ok(())
    }

    async fn put_artifact(
        &self,
        step_id: &str,
        epoch: i64,
        name: &str,
        bytes: Bytes,
    ) -> Result<ArtifactRef, PlaneError> {
        let resp = self
            .send(
                reqwest::Method::PUT,
                &format!("/steps/{step_id}/artifacts/{name}?epoch={epoch}"),
                Duration::from_secs(600),
                |r| {
                    r.header("Content-Type", "application/octet-stream")
                        .body(bytes.clone())
                },
            )
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(refusal(resp).await);
        }
        resp.json().await.map_err(unavailable)
    }

    async fn get_artifact(
        &self,
        step_id: &str,
        epoch: i64,
        name: &str,
    ) -> Result<Bytes, PlaneError> {
        let resp = self
            .send(
                reqwest::Method::GET,
                &format!("/steps/{step_id}/artifacts/{name}?epoch={epoch}"),
                Duration::from_secs(600),
                |r| r,
            )
            .await?;
        if !resp.status().is_success() {
            return Err(refusal(resp).await);
        }
        resp.bytes().await.map_err(unavailable)
    }

    async fn complete(
        &self,
        step_id: &str,
        req: CompleteRequest,
    ) -> Result<Option<Assignment>, PlaneError> {
        let resp = self
            .post_json(&format!("/steps/{step_id}/complete"), &req)
            .await?;
        // An older controller answers `{}` whatever was asked.
        let r: CompleteResponse = resp.json().await.map_err(unavailable)?;
        Ok(r.next)
    }

    async fn release(
        &self,
        step_id: &str,
        epoch: i64,
        reason: &str,
        retry_after_ms: Option<u64>,
    ) -> Result<(), PlaneError> {
        let body = ReleaseRequest {
            epoch,
            reason: Some(reason.into()),
            retry_after_ms,
        };
        self.post_json(&format!("/steps/{step_id}/release"), &body)
            .await?;
        Ok(())
    }
}
