//! Scripts: create, list, read (`If-None-Match`), change (merge patch,
//! `If-Match`). Versions and publishing are in `versions.rs`.

use actix_web::http::{header, StatusCode};
use actix_web::web::Path;
use actix_web::{get, patch, post, HttpRequest, HttpResponse};
use actors::domain::{self as core, PatchRequest};
use actors::service::idempotency::Recorded;
use actors::service::scripts::ScriptFilter;

use crate::dto::scripts::{
    CreateScriptRequest, ListScriptsQuery, PatchScriptRequest, Script, ScriptView,
};
use crate::http::cursor::{KeyKind, Page, PageRequest};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{no_nul, JsonBody, Query};
use crate::http::idempotency::{recorded_json, KeyedPost};
use crate::http::state::Svc;
use crate::http::tenant::Ctx;

/// A script view with the script's ETag.
pub(crate) fn script_response(view: core::ScriptView) -> HttpResponse {
    let script = view.script.clone();
    with_etag(HttpResponse::Ok().json(ScriptView::from(view)), &script)
}

/// The response with the script's ETag.
fn with_etag(mut res: HttpResponse, script: &core::Script) -> HttpResponse {
    if let Ok(v) = header::HeaderValue::from_str(&script.etag()) {
        res.headers_mut().insert(header::ETAG, v);
    }
    res
}

pub(crate) fn header_str(req: &HttpRequest, name: header::HeaderName) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Create a script (status DRAFT, latestVersion 0).
#[utoipa::path(tag = "scripts", params(crate::dto::TenantHeader),
    request_body = CreateScriptRequest,
    responses(
        (status = 201, description = "Created", body = ScriptView,
            headers(("Location" = String, description = "/scripts/{id}"), ("ETag" = String))),
    ))]
#[post("/scripts")]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn create_script(post: KeyedPost<CreateScriptRequest>, svc: Svc) -> ApiResult {
    let tenant = post.ctx.tenant(post.body.tenant_id.as_deref())?;
    post.run(tenant, render_created, |w| async move {
        let new = w.body.into_new()?;
        let created = svc
            .scripts
            .create(&w.tenant, &w.actor, new, w.idem.as_ref());
        Ok(created.await?)
    })
    .await
}

fn render_created(s: &core::Script) -> Recorded {
    recorded_json(
        StatusCode::CREATED,
        vec![
            ("location", format!("/scripts/{}", s.id)),
            ("etag", s.etag()),
        ],
        &ScriptView {
            script: Script::from(s.clone()),
            active_version: None,
        },
    )
}

/// List the tenant's scripts, newest first.
#[utoipa::path(tag = "scripts", params(crate::dto::TenantHeader, ListScriptsQuery),
    responses(
        (status = 200, description = "A page of scripts", body = Page<Script>),
    ))]
#[get("/scripts")]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn list_scripts(ctx: Ctx, query: Query<ListScriptsQuery>, svc: Svc) -> ApiResult {
    let query = query.into_inner();
    let tenant = ctx.tenant(query.tenant_id.as_deref())?;
    no_nul("q", query.q.as_deref().unwrap_or_default())?;
    no_nul("slug", query.slug.as_deref().unwrap_or_default())?;
    let q = query.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
    if q.is_some_and(|q| q.chars().count() > 100) {
        return Err(ApiError::field("q", "must be at most 100 characters"));
    }
    let status = query.status.map(core::ScriptStatus::from);
    let filters = [
        tenant.as_str(),
        q.unwrap_or_default(),
        query.slug.as_deref().unwrap_or_default(),
        status.map(|s| s.as_str()).unwrap_or_default(),
    ];
    let page = PageRequest::parse(
        query.limit,
        query.cursor.as_deref(),
        &filters,
        KeyKind::Time,
    )?;
    let filter = ScriptFilter {
        q: q.map(str::to_string),
        slug: query.slug.clone(),
        status,
    };
    let rows = svc.scripts.list(&tenant, &filter, page.window).await?;
    Ok(HttpResponse::Ok().json(page.finish::<_, Script>(rows)))
}

/// A script with its active version; `If-None-Match` answers 304.
#[utoipa::path(tag = "scripts", params(crate::dto::TenantHeader, ("id" = uuid::Uuid, Path, description = "Script id"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier response")),
    responses(
        (status = 200, description = "The script", body = ScriptView, headers(("ETag" = String))),
        (status = 304, description = "Not modified"),
    ))]
#[get("/scripts/{id}")]
#[tracing::instrument(level = "debug", skip_all, fields(script = %path.as_str()))]
pub async fn get_script(ctx: Ctx, req: HttpRequest, path: Path<String>, svc: Svc) -> ApiResult {
    let (id, tenant) = ctx.target("id", &path)?;
    let view = svc.scripts.get(&tenant, id).await?;
    if let Some(inm) = header_str(&req, header::IF_NONE_MATCH) {
        if core::script::if_match_ok(&inm, &view.script) {
            let not_modified = HttpResponse::NotModified().finish();
            return Ok(with_etag(not_modified, &view.script));
        }
    }
    Ok(script_response(view))
}

/// Change a script (JSON merge patch); `If-Match` is honoured.
#[utoipa::path(tag = "scripts", params(crate::dto::TenantHeader, ("id" = uuid::Uuid, Path, description = "Script id"),
        ("If-Match" = Option<String>, Header, description = "The ETag the change is based on, or *")),
    request_body = PatchScriptRequest,
    responses(
        (status = 200, description = "The script after the change", body = ScriptView, headers(("ETag" = String))),
    ))]
#[patch("/scripts/{id}")]
#[tracing::instrument(level = "debug", skip_all, fields(script = %path.as_str()))]
pub async fn patch_script(
    ctx: Ctx,
    svc: Svc,
    req: HttpRequest,
    path: Path<String>,
    body: JsonBody<PatchScriptRequest>,
) -> ApiResult {
    let (id, tenant) = ctx.target("id", &path)?;
    let (patch, note) = body.value.into_domain()?;
    let req = PatchRequest {
        tenant,
        actor: ctx.caller.actor_id.clone(),
        if_match: header_str(&req, header::IF_MATCH),
        patch,
        note,
    };
    let view = svc.scripts.patch(id, req).await?;
    Ok(script_response(view))
}
