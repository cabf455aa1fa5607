//! `ApiError`: every failure answer of both APIs, as JSON `{"error", "code"}` with an explicit
//! status per kind. 5xx bodies are opaque; their cause goes to the log. Also the error handlers
//! that turn actix-web's own extractor failures (malformed JSON, wrong content type, oversized
//! bodies, bad query strings) into the same shape.

use crate::actors::lease::LeaseError;
use crate::actors::registry::RegistryError;
use crate::actors::scheduler::SchedError;
use crate::api::validate::Invalid;
use crate::api::ErrorBody;
use crate::db::DbError;
use actix_web::http::StatusCode;
use actix_web::{error, HttpRequest, HttpResponse, ResponseError};

/// A failed request: status, stable code, human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(code: &'static str, msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, msg)
    }
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }
    pub fn unauthorized(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", msg)
    }
    pub fn forbidden(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", msg)
    }
    pub fn conflict(code: &'static str, msg: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, msg)
    }
    /// A 5xx: the cause is logged, the body says nothing about it.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(cause = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
    pub fn unavailable(cause: impl std::fmt::Display) -> Self {
        tracing::error!(cause = %cause, "dependency unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "service temporarily unavailable, retry later",
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }
    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(ErrorBody {
            error: self.message.clone(),
            code: self.code.to_string(),
        })
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::NotFound => ApiError::not_found("resource"),
            DbError::StaleLease => ApiError::conflict("stale_lease", e.to_string()),
            DbError::InvalidTransition(m) => ApiError::conflict("invalid_transition", m),
            DbError::Conflict(m) => ApiError::conflict("conflict", m),
            other => ApiError::unavailable(other),
        }
    }
}

impl From<SchedError> for ApiError {
    fn from(e: SchedError) -> Self {
        match e {
            SchedError::NotFound => ApiError::not_found("run"),
            SchedError::Invalid(m) => ApiError::bad_request("invalid_request", m),
            SchedError::InvalidTransition(m) => ApiError::conflict("invalid_transition", m),
            SchedError::BranchInUse(m) => ApiError::conflict("run_branch_in_use", m),
            SchedError::NoCapacity(m) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_capacity", m)
            }
            SchedError::Db(d) => d.into(),
            SchedError::Internal(m) => ApiError::internal(m),
        }
    }
}

impl From<LeaseError> for ApiError {
    fn from(e: LeaseError) -> Self {
        match e {
            LeaseError::Stale => ApiError::conflict("stale_lease", e.to_string()),
            LeaseError::Forbidden => ApiError::forbidden(e.to_string()),
            LeaseError::NotFound => ApiError::not_found("step"),
            LeaseError::Invalid(m) => ApiError::bad_request("invalid_request", m),
            LeaseError::OffsetGap(n) => ApiError::conflict(
                "offset_gap",
                format!("output offset is past the {n} bytes held; resend from {n}"),
            ),
            LeaseError::Db(d) => d.into(),
            LeaseError::Store(m) => {
                // The worker fails the step with this message: say what broke, not how.
                tracing::error!(cause = %m, "artifact store unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "artifact_store_unavailable",
                    "the controller cannot reach the artifact store (it retried)",
                )
            }
            LeaseError::Internal(m) => ApiError::internal(m),
            LeaseError::Stopping => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "controller_stopping",
                e.to_string(),
            ),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Unauthorized => ApiError::unauthorized(e.to_string()),
            RegistryError::Forbidden => ApiError::forbidden(e.to_string()),
            RegistryError::DuplicateInstance => {
                ApiError::conflict("duplicate_worker", e.to_string())
            }
            RegistryError::Offline => ApiError::conflict("worker_offline", e.to_string()),
            RegistryError::NotFound => ApiError::not_found("worker"),
            RegistryError::Invalid(m) => ApiError::bad_request("invalid_request", m),
            RegistryError::TooManyRegistrations(_) => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_registrations",
                e.to_string(),
            ),
            RegistryError::TooManyWorkers(_) => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_workers",
                e.to_string(),
            ),
            RegistryError::Db(d) => d.into(),
            RegistryError::Lease(m) => ApiError::unavailable(m),
        }
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        match e {
            Invalid::Request(m) => ApiError::bad_request("invalid_request", m),
            Invalid::TooLarge(m) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", m)
            }
        }
    }
}

impl From<actix::MailboxError> for ApiError {
    fn from(e: actix::MailboxError) -> Self {
        ApiError::unavailable(e)
    }
}

/// JSON body errors: 413 oversized, 415 wrong content type, 400 malformed.
pub fn json_error(err: error::JsonPayloadError, _req: &HttpRequest) -> error::Error {
    use error::JsonPayloadError as J;
    let e = match &err {
        J::OverflowKnownLength { .. } | J::Overflow { .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "request body is too large",
        ),
        J::ContentType => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected Content-Type: application/json",
        ),
        J::Deserialize(d) => {
            ApiError::bad_request("invalid_json", format!("invalid JSON body: {d}"))
        }
        other => ApiError::bad_request("invalid_json", format!("invalid JSON body: {other}")),
    };
    e.into()
}

/// Query string errors: 400.
pub fn query_error(err: error::QueryPayloadError, _req: &HttpRequest) -> error::Error {
    ApiError::bad_request("invalid_query", format!("invalid query string: {err}")).into()
}

/// Path errors: a malformed id is simply not found.
pub fn path_error(_err: error::PathError, _req: &HttpRequest) -> error::Error {
    ApiError::not_found("resource").into()
}

/// Raw body errors (uploads): 413 oversized, else 400.
pub fn payload_error(err: error::PayloadError) -> ApiError {
    match err {
        error::PayloadError::Overflow => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "request body is too large",
        ),
        other => {
            ApiError::bad_request("invalid_body", format!("cannot read request body: {other}"))
        }
    }
}
