//! Versions of a script: create (group-committed by the script's actor),
//! publish or roll back, list, read; and the audit trail.

use actix_web::http::StatusCode;
use actix_web::web::Path;
use actix_web::{get, post, HttpResponse};
use actors::domain::{self as core, PublishRequest, VersionRequest};
use actors::service::idempotency::Recorded;
use validator::Validate;

use crate::dto::scripts::{
    AuditEntry, CreateVersionRequest, DiffQuery, PageQuery, PublishRequestBody, ScriptView,
    Version, VersionDiff, VersionSummary,
};
use crate::http::cursor::{KeyKind, Page};
use crate::http::error::ApiResult;
use crate::http::extract::{path_uuid, path_version, JsonBody, Query};
use crate::http::idempotency::{recorded_json, KeyedPost};
use crate::http::state::Svc;
use crate::http::tenant::Ctx;
use crate::http::validation::to_api;
use crate::routes::scripts::script_response;

/// Save a new immutable version (number = latestVersion + 1).
#[utoipa::path(tag = "versions", params(crate::dto::TenantHeader, ("id" = uuid::Uuid, Path, description = "Script id")),
    request_body = CreateVersionRequest,
    responses(
        (status = 201, description = "Created", body = Version,
            headers(("Location" = String, description = "/scripts/{id}/versions/{version}"))),
    ))]
#[post("/scripts/{id}/versions")]
#[tracing::instrument(level = "debug", skip_all, fields(script = %path.as_str()))]
pub async fn create_version(
    post: KeyedPost<CreateVersionRequest>,
    path: Path<String>,
    svc: Svc,
) -> ApiResult {
    let id = path_uuid("id", &path)?;
    let tenant = post.ctx.tenant(None)?;
    post.run(tenant, render_created, |w| async move {
        let new = w.body.into_new()?;
        let req = VersionRequest {
            tenant: w.tenant,
            actor: w.actor,
            new,
        };
        Ok(svc.scripts.create_version(id, req, w.idem).await?)
    })
    .await
}

fn render_created(v: &core::Version) -> Recorded {
    let location = format!("/scripts/{}/versions/{}", v.script_id, v.version);
    recorded_json(
        StatusCode::CREATED,
        vec![("location", location)],
        &Version::from(v.clone()),
    )
}

/// Publish a version (PUBLISH), or an older one (ROLLBACK); a no-op when already active.
#[utoipa::path(tag = "versions", params(crate::dto::TenantHeader, ("id" = uuid::Uuid, Path, description = "Script id"),
        ("version" = i32, Path, minimum = 1, description = "Version number")),
    request_body(content = PublishRequestBody, description = "May be empty"),
    responses(
        (status = 200, description = "The script with its new active version", body = ScriptView, headers(("ETag" = String))),
    ))]
#[post("/scripts/{id}/versions/{version}/publish")]
#[tracing::instrument(level = "debug", skip_all, fields(script = %path.0))]
pub async fn publish_version(
    ctx: Ctx,
    svc: Svc,
    path: Path<(String, String)>,
    body: JsonBody<PublishRequestBody>,
) -> ApiResult {
    let id = path_uuid("id", &path.0)?;
    let version = path_version(&path.1)?;
    let tenant = ctx.tenant(None)?;
    body.validate().map_err(to_api)?;
    let req = PublishRequest {
        tenant,
        actor: ctx.caller.actor_id.clone(),
        version,
        note: body.value.note,
    };
    let view = svc.scripts.publish(id, req).await?;
    Ok(script_response(view))
}

/// A script's versions, highest first (without graphJson and variablesDef).
#[utoipa::path(tag = "versions", params(crate::dto::TenantHeader, ("id" = uuid::Uuid, Path, description = "Script id"), PageQuery),
    responses(
        (status = 200, description = "A page of versions", body = Page<VersionSummary>),
    ))]
#[get("/scripts/{id}/versions")]
#[tracing::instrument(level = "debug", skip_all, fields(script = %path.as_str()))]
pub async fn list_versions(
    ctx: Ctx,
    path: Path<String>,
    q: Query<PageQuery>,
    svc: Svc,
) -> ApiResult {
    let (id, tenant) = ctx.target("id", &path)?;
    let page = q.page(&["versions", &id.to_string()], KeyKind::Version)?;
    let rows = svc.scripts.versions(&tenant, id, page.window).await?;
    Ok(HttpResponse::Ok().json(page.finish::<_, VersionSummary>(rows)))
}

/// One version in full.
#[utoipa::path(tag = "versions", params(crate::dto::TenantHeader, ("id" = uuid::Uuid, Path, description = "Script id"),
        ("version" = i32, Path, minimum = 1, description = "Version number")),
    responses(
        (status = 200, description = "The version", body = Version),
    ))]
#[get("/scripts/{id}/versions/{version}")]
#[tracing::instrument(level = "debug", skip_all, fields(script = %path.0))]
pub async fn get_version(ctx: Ctx, path: Path<(String, String)>, svc: Svc) -> ApiResult {
    let id = path_uuid("id", &path.0)?;
    let version = path_version(&path.1)?;
    let tenant = ctx.tenant(None)?;
    let v = svc.scripts.version(&tenant, id, version).await?;
    Ok(HttpResponse::Ok().json(Version::from(v)))
}

/// What changed between two versions: nodes and edges matched by id (added,
/// removed, changed with an RFC 6902 patch), `variablesDef` and the other
/// `graphJson` members as RFC 6902 operations.
#[utoipa::path(tag = "versions", params(crate::dto::TenantHeader, ("id" = uuid::Uuid, Path, description = "Script id"),
        ("version" = i32, Path, minimum = 1, description = "The newer side (`to`)"), DiffQuery),
    responses(
        (status = 200, description = "The diff", body = VersionDiff),
    ))]
#[get("/scripts/{id}/versions/{version}/diff")]
#[tracing::instrument(level = "debug", skip_all, fields(script = %path.0))]
pub async fn diff_versions(
    ctx: Ctx,
    path: Path<(String, String)>,
    q: Query<DiffQuery>,
    svc: Svc,
) -> ApiResult {
    let id = path_uuid("id", &path.0)?;
    let version = path_version(&path.1)?;
    let against = q.against(version)?;
    let tenant = ctx.tenant(None)?;
    let d = svc.scripts.diff(&tenant, id, version, against).await?;
    Ok(HttpResponse::Ok().json(VersionDiff::new(id, against, version, d)))
}

/// A script's audit trail, newest first.
#[utoipa::path(tag = "audit", params(crate::dto::TenantHeader, ("id" = uuid::Uuid, Path, description = "Script id"), PageQuery),
    responses(
        (status = 200, description = "A page of audit entries", body = Page<AuditEntry>),
    ))]
#[get("/scripts/{id}/audit")]
#[tracing::instrument(level = "debug", skip_all, fields(script = %path.as_str()))]
pub async fn list_audit(ctx: Ctx, path: Path<String>, q: Query<PageQuery>, svc: Svc) -> ApiResult {
    let (id, tenant) = ctx.target("id", &path)?;
    let page = q.page(&["audit", &id.to_string()], KeyKind::Time)?;
    let rows = svc.scripts.audit(&tenant, id, page.window).await?;
    Ok(HttpResponse::Ok().json(page.finish::<_, AuditEntry>(rows)))
}
