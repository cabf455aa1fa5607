//! The HTTP surface: routes by resource, the shared `ApiError`, authentication middleware and
//! SSE streams. `runs_api` and `worker_api` are mounted by `app.rs` according to the role.

pub mod auth;
pub mod error;
pub mod extract;
pub mod health;
pub mod output;
pub mod postmortem;
pub mod review;
mod review_git;
mod review_tools;
pub mod runs;
pub mod state;
pub mod stream_slots;
pub mod streams;
pub mod uploads;
pub mod views;
pub mod workers;
pub mod worktrees;

use actix_web::middleware::from_fn;
use actix_web::{web, HttpResponse};
use error::ApiError;
use state::AppState;

/// Unknown paths.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found("route"))
}

async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        actix_web::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    ))
}

fn res(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

/// JSON body, query and path extractor settings with the JSON error shape. JSON bodies are
/// capped at `limits.json_body_bytes`; the output route reads its larger chunks itself.
pub fn extractor_config(cfg: &mut web::ServiceConfig, st: &AppState) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(st.limits.json_body_bytes)
            .error_handler(error::json_error),
    )
    .app_data(web::QueryConfig::default().error_handler(error::query_error))
    .app_data(web::PathConfig::default().error_handler(error::path_error))
    .app_data(web::PayloadConfig::default().limit(st.limits.artifact_bytes));
}

/// `/health` (every role).
pub fn health_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(res("/health").route(web::get().to(health::health)));
}

/// `/ready` of a worker (the other roles serve it with the runs API): 503 until `joined`.
pub fn worker_health_routes(cfg: &mut web::ServiceConfig, joined: &health::Joined) {
    cfg.app_data(web::Data::new(joined.clone()))
        .service(res("/ready").route(web::get().to(health::worker_ready)));
}

/// The runs API (single and controller roles). Reads need the `read` scope, changes to runs
/// `submit`, revoking a worker `admin` (see [`auth`]).
pub fn runs_api(cfg: &mut web::ServiceConfig) {
    let read = || from_fn(auth::read);
    let submit = || from_fn(auth::submit);
    cfg.service(res("/ready").route(web::get().to(health::ready)))
        .service(res("/metrics").route(web::get().to(health::metrics)))
        .service(
            res("/runs")
                .route(web::post().to(runs::create).wrap(submit()))
                .route(web::get().to(runs::list).wrap(read())),
        );
    cfg.service(
        res("/runs/{id}/pause")
            .wrap(submit())
            .route(web::post().to(runs::pause)),
    )
    .service(
        res("/runs/{id}/resume")
            .wrap(submit())
            .route(web::post().to(runs::resume)),
    )
    .service(
        res("/runs/{id}/cancel")
            .wrap(submit())
            .route(web::post().to(runs::cancel)),
    )
    .service(
        res("/runs/{id}/retry")
            .wrap(submit())
            .route(web::post().to(runs::retry)),
    )
    .service(
        res("/runs/{id}/scrap")
            .wrap(submit())
            .route(web::post().to(review::scrap)),
    )
    .service(
        res("/runs/{id}/merge")
            .wrap(submit())
            .route(web::post().to(review::merge)),
    )
    .service(
        res("/runs/{id}/reset")
            .wrap(submit())
            .route(web::post().to(review::reset)),
    )
    .service(
        res("/runs/{id}/postmortem")
            .route(web::post().to(postmortem::create).wrap(submit()))
            .route(web::get().to(postmortem::get).wrap(read())),
    )
    .service(
        res("/runs/{id}/create-pr")
            .wrap(submit())
            .route(web::post().to(review::create_pr)),
    );
    cfg.service(
        res("/runs/{id}")
            .wrap(read())
            .route(web::get().to(runs::get)),
    )
    .service(
        res("/runs/{id}/steps")
            .wrap(read())
            .route(web::get().to(runs::steps)),
    )
    .service(
        res("/runs/{id}/diff")
            .wrap(read())
            .route(web::get().to(review::diff)),
    )
    .service(
        res("/runs/{id}/events")
            .wrap(read())
            .route(web::get().to(streams::events)),
    )
    .service(
        res("/runs/{id}/output")
            .wrap(read())
            .route(web::get().to(output::output)),
    )
    .service(
        res("/runs/{id}/artifacts")
            .wrap(read())
            .route(web::get().to(runs::artifacts)),
    )
    .service(
        res("/runs/{id}/artifacts/{name:.+}")
            .wrap(read())
            .route(web::get().to(runs::artifact)),
    )
    .service(
        res("/workers")
            .wrap(read())
            .route(web::get().to(workers::list)),
    )
    .service(
        res("/worktrees")
            .route(web::get().to(worktrees::list).wrap(read()))
            .route(web::delete().to(worktrees::remove).wrap(submit())),
    );
}

/// The worker API (controller role only: `app::Subsystems` leaves it off on a single host).
/// Mounted before the runs API, and the routes a pool calls most come first: every path with
/// an `{id}` in it is matched with a regular expression, one route after another (7 % of the
/// controller's CPU in the pool bench when the completion route was the last of twenty; 2 %
/// now).
pub fn worker_api(cfg: &mut web::ServiceConfig) {
    cfg.service(
        res("/steps/{id}/complete")
            .wrap(from_fn(auth::worker))
            .route(web::post().to(workers::complete)),
    )
    .service(
        res("/workers/{id}/heartbeat")
            .wrap(from_fn(auth::worker_self))
            .route(web::post().to(workers::heartbeat)),
    )
    .service(
        res("/workers/{id}/claim")
            .wrap(from_fn(auth::worker_self))
            .route(web::post().to(workers::claim)),
    )
    .service(
        res("/steps/{id}/output")
            .wrap(from_fn(auth::worker))
            .route(web::post().to(workers::output)),
    )
    .service(
        res("/steps/{id}/events")
            .wrap(from_fn(auth::worker))
            .route(web::post().to(workers::event)),
    )
    .service(
        res("/steps/{id}/artifacts/{name:.+}")
            .wrap(from_fn(auth::worker))
            .route(web::put().to(workers::artifact))
            .route(web::get().to(workers::download)),
    )
    .service(
        res("/steps/{id}/release")
            .wrap(from_fn(auth::worker))
            .route(web::post().to(workers::release)),
    )
    // Before `/workers/{id}`, which would match it too.
    .service(
        res("/workers/register")
            .wrap(from_fn(auth::join))
            .route(web::post().to(workers::register)),
    )
    .service(
        res("/workers/{id}")
            .wrap(from_fn(auth::admin))
            .route(web::delete().to(workers::revoke)),
    );
}
