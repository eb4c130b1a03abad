//! Runs: start, upsert variables (group-committed by the run's actor and
//! the variable writer), finish, list, read.

use actix_web::http::StatusCode;
use actix_web::web::Path;
use actix_web::{get, post, HttpResponse};
use actors::domain::{self as core, NewRun};
use actors::service::idempotency::Recorded;
use actors::service::runs::RunFilter;

use crate::dto::runs::{
    parse_time, FinishRequest, ListRunsQuery, Run, RunStarted, RunStatus, RunVariable, RunWithVars,
    StartRunRequest, VarItems, VarsUpserted,
};
use crate::http::cursor::{KeyKind, Page, PageRequest};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{JsonBody, Query};
use crate::http::idempotency::{recorded_json, KeyedPost};
use crate::http::state::Svc;
use crate::http::tenant::Ctx;

/// Start a run of a script version (default: the active one).
#[utoipa::path(tag = "runs", params(crate::dto::TenantHeader),
    request_body = StartRunRequest,
    responses(
        (status = 201, description = "Started", body = RunStarted, headers(("Location" = String, description = "/runs/{runId}"))),
    ))]
#[post("/runs")]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn start_run(post: KeyedPost<StartRunRequest>, svc: Svc) -> ApiResult {
    let tenant = post.ctx.tenant(post.body.tenant_id.as_deref())?;
    post.run(tenant, render_started, |w| async move {
        let b = w.body;
        let new = NewRun {
            script_id: b.script_id,
            version: b.version,
            started_by_id: b.started_by_id,
            connector_type: b.connector_type,
            connector_key: b.connector_key,
        };
        Ok(svc
            .runs
            .start(&w.tenant, &w.actor, new, w.idem.as_ref())
            .await?)
    })
    .await
}

fn render_started(run: &core::Run) -> Recorded {
    recorded_json(
        StatusCode::CREATED,
        vec![("location", format!("/runs/{}", run.id))],
        &RunStarted {
            run_id: run.id,
            run: Run::from(run.clone()),
        },
    )
}

/// Upsert run variables by key; acknowledged means committed.
#[utoipa::path(tag = "runs", params(crate::dto::TenantHeader, ("runId" = uuid::Uuid, Path, description = "Run id")),
    request_body = VarItems,
    responses(
        (status = 200, description = "Committed", body = VarsUpserted),
    ))]
#[post("/runs/{runId}/vars")]
#[tracing::instrument(level = "debug", skip_all, fields(run = %path.as_str()))]
pub async fn upsert_vars(
    ctx: Ctx,
    svc: Svc,
    path: Path<String>,
    body: JsonBody<VarItems>,
) -> ApiResult {
    let (run_id, tenant) = ctx.target("runId", &path)?;
    let items = body.value.into_upserts()?;
    let done = svc.runs.upsert(run_id, tenant, items, None).await?;
    Ok(HttpResponse::Ok().json(VarsUpserted {
        run_id,
        upserted: done.upserted,
        vars: done.vars.into_iter().map(RunVariable::from).collect(),
    }))
}

/// Finish a run (after its queued upserts).
#[utoipa::path(tag = "runs", params(crate::dto::TenantHeader, ("runId" = uuid::Uuid, Path, description = "Run id")),
    request_body = FinishRequest,
    responses(
        (status = 200, description = "The finished run", body = Run),
    ))]
#[post("/runs/{runId}/finish")]
#[tracing::instrument(level = "debug", skip_all, fields(run = %path.as_str()))]
pub async fn finish_run(
    ctx: Ctx,
    svc: Svc,
    path: Path<String>,
    body: JsonBody<FinishRequest>,
) -> ApiResult {
    let (run_id, tenant) = ctx.target("runId", &path)?;
    if body.status == RunStatus::Running {
        return Err(ApiError::field(
            "status",
            "must be SUCCEEDED, FAILED or CANCELLED",
        ));
    }
    let run = svc
        .runs
        .finish(run_id, tenant, body.value.status.into(), None)
        .await?;
    Ok(HttpResponse::Ok().json(Run::from(run)))
}

/// The tenant's runs, newest startedAt first.
#[utoipa::path(tag = "runs", params(crate::dto::TenantHeader, ListRunsQuery),
    responses(
        (status = 200, description = "A page of runs", body = Page<Run>),
    ))]
#[get("/runs")]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn list_runs(ctx: Ctx, query: Query<ListRunsQuery>, svc: Svc) -> ApiResult {
    let q = query.into_inner();
    let tenant = ctx.tenant(q.tenant_id.as_deref())?;
    let from = parse_time("from", q.from.as_deref())?;
    let to = parse_time("to", q.to.as_deref())?;
    if let (Some(f), Some(t)) = (from, to) {
        if f > t {
            return Err(ApiError::field("from", "must not be after to"));
        }
    }
    let status = q.status.map(core::RunStatus::from);
    let ms = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map(|t| t.timestamp_millis().to_string())
            .unwrap_or_default()
    };
    let script = q.script_id.map(|s| s.to_string()).unwrap_or_default();
    let status_s = status.map(|s| s.as_str()).unwrap_or_default();
    let filters = [
        "runs",
        tenant.as_str(),
        &script,
        status_s,
        &ms(from),
        &ms(to),
    ];
    let page = PageRequest::parse(q.limit, q.cursor.as_deref(), &filters, KeyKind::Time)?;
    let filter = RunFilter {
        script_id: q.script_id,
        status,
        from,
        to,
    };
    let rows = svc.runs.list(&tenant, &filter, page.window).await?;
    Ok(HttpResponse::Ok().json(page.finish::<_, Run>(rows)))
}

/// A run with its variables sorted by key.
#[utoipa::path(tag = "runs", params(crate::dto::TenantHeader, ("runId" = uuid::Uuid, Path, description = "Run id")),
    responses(
        (status = 200, description = "The run", body = RunWithVars),
    ))]
#[get("/runs/{runId}")]
#[tracing::instrument(level = "debug", skip_all, fields(run = %path.as_str()))]
pub async fn get_run(ctx: Ctx, path: Path<String>, svc: Svc) -> ApiResult {
    let (run_id, tenant) = ctx.target("runId", &path)?;
    let (run, vars) = svc.runs.get(&tenant, run_id).await?;
    Ok(HttpResponse::Ok().json(RunWithVars {
        run: run.into(),
        vars: vars.into_iter().map(RunVariable::from).collect(),
    }))
}
