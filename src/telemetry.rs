//! Logging: `tracing` to stderr, filtered by `RUST_LOG` when set, else by the `log` setting,
//! as text or as JSON lines (`log_format`); the span each HTTP request's lines are logged in
//! ([`RequestSpan`], with tracing-actix-web's request id), and the request id added to the
//! JSON body of every 5xx ([`request_id_in_5xx`]) so that an answer can be found in the log.

use crate::settings::LogFormat;
use actix_web::body::{BoxBody, EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::HttpMessage;
use std::io::IsTerminal;
use tracing_actix_web::RequestId;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber (once; later calls are ignored).
pub fn init(default_filter: &str, format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        // Each line one object: `timestamp`, `level`, `fields` (the message and the event's
        // fields), `span` (the innermost span's name and fields) and `spans` (all of them).
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
}

/// The span of each HTTP request: its request id, method and path, and at its end its status (and error,
/// if any) as `tracing-actix-web`'s default records them. The default also matches the
/// request's route a second time (a regular expression per route tried), reads its client
/// address, host and user agent: about 4 % of the controller's CPU in a busy pool (a profile
/// of the throughput bench), for fields no one reads here.
pub struct RequestSpan;

impl tracing_actix_web::RootSpanBuilder for RequestSpan {
    fn on_request_start(request: &actix_web::dev::ServiceRequest) -> tracing::Span {
        use tracing::field::Empty;
        let id = request.extensions().get::<RequestId>().copied();
        tracing::info_span!(
            "HTTP request",
            request_id = id.map(tracing::field::display),
            http.method = %request.method(),
            http.target = %request.path(),
            http.status_code = Empty,
            otel.status_code = Empty,
            exception.message = Empty,
            exception.details = Empty,
        )
    }

    fn on_request_end<B: actix_web::body::MessageBody>(
        span: tracing::Span,
        outcome: &Result<actix_web::dev::ServiceResponse<B>, actix_web::Error>,
    ) {
        tracing_actix_web::DefaultRootSpanBuilder::on_request_end(span, outcome)
    }
}

/// Adds `"request_id"` (the one in the request's span and so in its log lines) to the JSON
/// object body of a 5xx answer; other answers pass untouched. Wrapped inside
/// `TracingLogger`, which makes the id.
pub async fn request_id_in_5xx(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody, BoxBody>>, actix_web::Error> {
    let res = next.call(req).await?;
    let id = res.request().extensions().get::<RequestId>().copied();
    let Some(id) = id.filter(|_| res.status().is_server_error()) else {
        return Ok(res.map_into_left_body());
    };
    let (req, res) = res.into_parts();
    let (res, body) = res.into_parts();
    let bytes = actix_web::body::to_bytes(body).await.unwrap_or_default();
    let bytes = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(mut map)) => {
            map.insert("request_id".into(), id.to_string().into());
            serde_json::to_vec(&map).map_or(bytes, Into::into)
        }
        _ => bytes,
    };
    let res = res.set_body(BoxBody::new(bytes));
    Ok(ServiceResponse::new(req, res).map_into_right_body())
}
