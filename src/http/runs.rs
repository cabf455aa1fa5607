//! Runs API routes (API.md §1): create, list, inspect, steps, control verbs, artifacts. Reads
//! go straight to storage; every change goes through the SchedulerActor.

use super::auth::Principal;
use super::error::ApiError;
use super::extract::{Id, Name};
use super::state::AppState;
use super::views;
use crate::actors::scheduler::{Control, ControlRun, CreateRun};
use crate::api::validate;
use crate::api::{
    ArtifactsEnvelope, CreateRunRequest, ListRunsQuery, Run, RunEnvelope, RunsEnvelope, Step,
    StepPhases, StepsEnvelope, StepsQuery,
};
use crate::artifacts::validate_name;
use crate::db::{self, DbError};
use crate::domain::access::Scope;
use actix_web::{web, HttpResponse};

/// `POST /runs`. The body is checked here first; a request that names commands or paths
/// (`agent_cmd`, `verify_cmds`, …) needs the `exec` scope unless the operator allows them:
/// commands come from the repository's `.loop/config`, not from whoever reaches the API.
pub async fn create(
    st: web::Data<AppState>,
    who: web::ReqData<Principal>,
    body: web::Json<CreateRunRequest>,
) -> Result<HttpResponse, ApiError> {
    let mut req = body.into_inner();
    validate::create_run(&mut req)?;
    let named = validate::command_keys(&req);
    if !named.is_empty() && !st.request_commands_allowed && !who.scopes.has(Scope::Exec) {
        return Err(ApiError::forbidden(format!(
            "a run request may set {} only with a token that has the 'exec' scope; \
             put them in the repository's .loop/config instead",
            named.join(", ")
        )));
    }
    let row = st.scheduler.send(CreateRun(req)).await??;
    Ok(HttpResponse::Created().json(RunEnvelope {
        run: views::run(&row),
    }))
}

pub async fn list(
    st: web::Data<AppState>,
    q: web::Query<ListRunsQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let (rows, mut usage) = st
        .db
        .run(move |c| {
            let ws = q.workspace_root.as_deref().map(stored_workspace_root);
            let rows = db::runs::list(c, ws.as_deref(), q.status.map(|s| s.as_str()))?;
            let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
            Ok::<_, DbError>((rows, db::usage::run_totals(c, &ids)?))
        })
        .await?;
    let runs = rows
        .iter()
        .map(|r| Run {
            usage: usage.remove(&r.id),
            ..views::run(r)
        })
        .collect();
    Ok(HttpResponse::Ok().json(RunsEnvelope { runs }))
}

/// Shared_fs runs store their workspace root canonicalized; a filter naming the same directory
/// another way (trailing slash, symlink, `..`) matches them too. Anything that is not an
/// existing absolute path (a git run's label) is matched as given. Blocking (file system).
fn stored_workspace_root(ws: &str) -> String {
    let p = std::path::Path::new(ws);
    match p.is_absolute().then(|| p.canonicalize()) {
        Some(Ok(real)) => real.to_string_lossy().to_string(),
        _ => ws.to_string(),
    }
}

pub async fn get(st: web::Data<AppState>, id: Id) -> Result<HttpResponse, ApiError> {
    let id = id.0;
    let (row, usage) = st
        .db
        .run(move |c| {
            let row = db::runs::get(c, &id)?.ok_or(DbError::NotFound)?;
            let usage = db::usage::run_total(c, &id)?;
            Ok::<_, DbError>((row, usage))
        })
        .await
        .map_err(|e| match e {
            DbError::NotFound => ApiError::not_found("run"),
            other => other.into(),
        })?;
    Ok(HttpResponse::Ok().json(RunEnvelope {
        run: Run {
            usage,
            ..views::run(&row)
        },
    }))
}

/// `GET /runs/{id}/steps[?phases=all]`: the run's steps in order; without `phases=all` only
/// those of the phases the old clients parse (see [`crate::api::StepPhases`]).
pub async fn steps(
    st: web::Data<AppState>,
    id: Id,
    q: web::Query<StepsQuery>,
) -> Result<HttpResponse, ApiError> {
    let (id, phases) = (id.0, q.phases);
    let (rows, mut usage) = st
        .db
        .run(move |c| {
            db::runs::get(c, &id)?.ok_or(DbError::NotFound)?;
            let rows = db::steps::for_run_with_leases(c, &id)?;
            Ok::<_, DbError>((rows, db::usage::for_run(c, &id)?))
        })
        .await
        .map_err(|e| match e {
            DbError::NotFound => ApiError::not_found("run"),
            other => other.into(),
        })?;
    let steps = rows
        .iter()
        .filter(|(s, _)| match s.phase.parse() {
            Ok(p) => phases.lists(p),
            Err(_) => phases == StepPhases::All,
        })
        .map(|(s, exp)| Step {
            usage: usage.remove(&s.id),
            ..views::step(s, *exp)
        })
        .collect();
    Ok(HttpResponse::Ok().json(StepsEnvelope { steps }))
}

async fn control(st: &AppState, id: String, verb: Control) -> Result<HttpResponse, ApiError> {
    st.scheduler.send(ControlRun { run_id: id, verb }).await??;
    Ok(HttpResponse::NoContent().finish())
}

pub async fn pause(st: web::Data<AppState>, id: Id) -> Result<HttpResponse, ApiError> {
    control(&st, id.0, Control::Pause).await
}

pub async fn resume(st: web::Data<AppState>, id: Id) -> Result<HttpResponse, ApiError> {
    control(&st, id.0, Control::Resume).await
}

pub async fn cancel(st: web::Data<AppState>, id: Id) -> Result<HttpResponse, ApiError> {
    control(&st, id.0, Control::Cancel).await
}

pub async fn retry(st: web::Data<AppState>, id: Id) -> Result<HttpResponse, ApiError> {
    control(&st, id.0, Control::Retry).await
}

pub async fn artifacts(st: web::Data<AppState>, id: Id) -> Result<HttpResponse, ApiError> {
    let id = id.0;
    let rows = st
        .db
        .run(move |c| {
            db::runs::get(c, &id)?.ok_or(DbError::NotFound)?;
            db::artifacts::for_run(c, &id)
        })
        .await
        .map_err(|e| match e {
            DbError::NotFound => ApiError::not_found("run"),
            other => other.into(),
        })?;
    Ok(HttpResponse::Ok().json(ArtifactsEnvelope {
        artifacts: rows.iter().map(views::artifact).collect(),
    }))
}

/// Streams an artifact from the configured store without loading it whole.
pub async fn artifact(
    st: web::Data<AppState>,
    id: Id,
    name: Name,
) -> Result<HttpResponse, ApiError> {
    let (id, name) = (id.0, name.0);
    if validate_name(&name).is_err() {
        return Err(ApiError::not_found("artifact"));
    }
    let row = st
        .db
        .run(move |c| db::artifacts::get(c, &id, &name))
        .await?
        .ok_or_else(|| ApiError::not_found("artifact"))?;
    let (size, stream) = st.store.reader(&row.object_key).await.map_err(|e| {
        if matches!(e, crate::artifacts::ArtifactError::NotFound { .. }) {
            ApiError::not_found("artifact")
        } else {
            ApiError::unavailable(e)
        }
    })?;
    let stream = futures_util::StreamExt::map(stream, |r| {
        r.map_err(actix_web::error::ErrorInternalServerError)
    });
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header(("X-Checksum-Sha256", row.sha256.clone()))
        .no_chunking(size)
        .streaming(stream))
}
