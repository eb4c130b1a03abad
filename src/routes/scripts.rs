//! Scripts, versions, publish/rollback and the audit trail.

use actix_web::http::{header, StatusCode};
use actix_web::{get, patch, post, web, HttpRequest, HttpResponse};
use actors::idempotency::Recorded;
use actors::pagination::Key;
use actors::scripts::model::{
    AuditEntry, NewScript, NewVersion, Script, ScriptPatch, ScriptStatus, ScriptView, Version,
    VersionSummary,
};
use actors::scripts::ops::{self, PatchRequest, PublishRequest, VersionRequest};
use actors::store::scripts as sql;
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use validator::Validate;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{no_nul, path_uuid, path_version, JsonBody, Query, RequestBody};
use crate::idempotency::{self as idem, Begun};
use crate::page::{Page, PageRequest};
use crate::settings::LimitsSettings;
use crate::state::{Db, State};
use crate::tenant::Ctx;
use crate::validation::{self as rules, double_option, to_api, Fields};

// ---------- request bodies ----------

/// `POST /scripts`.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"name": "Onboarding", "slug": "onboarding", "labels": ["sales"], "languageCodes": ["en", "pt-BR"]}))]
pub struct CreateScriptRequest {
    /// Alternative to the `x-tenant-id` header; both present must agree.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]
    pub tenant_id: Option<String>,
    /// 1..200 characters, not blank.
    #[validate(custom(function = "rules::name"))]
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    pub name: String,
    /// Unique in the tenant.
    #[validate(custom(function = "rules::slug"))]
    #[schema(max_length = 100, pattern = "^[a-z0-9]+(-[a-z0-9]+)*$")]
    pub slug: String,
    #[validate(custom(function = "rules::description"))]
    #[schema(max_length = 2000)]
    pub description: Option<String>,
    /// Up to 50 items of 1..100 characters.
    #[validate(custom(function = "rules::text_list"))]
    #[schema(max_items = 50)]
    pub labels: Option<Vec<String>>,
    /// Up to 50 items of 1..100 characters.
    #[validate(custom(function = "rules::text_list"))]
    #[schema(max_items = 50)]
    pub intents: Option<Vec<String>>,
    /// BCP 47 tags such as `en`, `pt-BR`.
    #[validate(custom(function = "rules::language_codes"))]
    #[schema(max_items = 50)]
    pub language_codes: Option<Vec<String>>,
    #[validate(custom(function = "rules::embedding_key"))]
    #[schema(min_length = 1, max_length = 200)]
    pub embedding_key: Option<String>,
}

impl RequestBody for CreateScriptRequest {}

/// `PATCH /scripts/:id`: a JSON merge patch. `null` clears an optional field.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"name": "Onboarding v2", "status": "ARCHIVED", "note": "replaced"}))]
pub struct PatchScriptRequest {
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub name: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub slug: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Vec<String>>)]
    pub labels: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Vec<String>>)]
    pub intents: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Vec<String>>)]
    pub language_codes: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub embedding_key: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<ScriptStatus>)]
    pub status: Option<Option<ScriptStatus>>,
    /// Recorded on the audit row; not a change by itself.
    pub note: Option<String>,
}

impl RequestBody for PatchScriptRequest {}

impl PatchScriptRequest {
    fn into_domain(self) -> Result<(ScriptPatch, Option<String>), ApiError> {
        let mut f = Fields::default();
        let required = |f: &mut Fields, field: &str, v: &Option<Option<String>>| {
            if matches!(v, Some(None)) {
                f.fail(field, "is required and cannot be null");
            }
        };
        required(&mut f, "name", &self.name);
        required(&mut f, "slug", &self.slug);
        if matches!(self.status, Some(None)) {
            f.fail("status", "is required and cannot be null");
        }
        if let Some(Some(v)) = &self.name {
            f.check("name", v.as_str(), rules::name);
        }
        if let Some(Some(v)) = &self.slug {
            f.check("slug", v.as_str(), rules::slug);
        }
        if let Some(Some(v)) = &self.description {
            f.check("description", v.as_str(), rules::description);
        }
        if let Some(Some(v)) = &self.labels {
            f.check("labels", v.as_slice(), rules::text_list);
        }
        if let Some(Some(v)) = &self.intents {
            f.check("intents", v.as_slice(), rules::text_list);
        }
        if let Some(Some(v)) = &self.language_codes {
            f.check("languageCodes", v.as_slice(), rules::language_codes);
        }
        if let Some(Some(v)) = &self.embedding_key {
            f.check("embeddingKey", v.as_str(), rules::embedding_key);
        }
        if let Some(v) = &self.note {
            f.check("note", v.as_str(), rules::note);
        }
        f.finish()?;
        let patch = ScriptPatch {
            name: self.name.flatten(),
            slug: self.slug.flatten(),
            description: self.description,
            labels: self.labels.map(Option::unwrap_or_default),
            intents: self.intents.map(Option::unwrap_or_default),
            language_codes: self.language_codes.map(Option::unwrap_or_default),
            embedding_key: self.embedding_key,
            status: self.status.flatten(),
        };
        let empty = patch.name.is_none()
            && patch.slug.is_none()
            && patch.description.is_none()
            && patch.labels.is_none()
            && patch.intents.is_none()
            && patch.language_codes.is_none()
            && patch.embedding_key.is_none()
            && patch.status.is_none();
        if empty {
            return Err(ApiError::field(
                "body",
                "the patch changes no field (note alone is not a change)",
            ));
        }
        Ok((patch, self.note))
    }
}

/// `POST /scripts/:id/versions`.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"graphJson": {"nodes": [{"id": "n1"}], "edges": []}, "changelog": "first draft", "baseVersion": 0}))]
pub struct CreateVersionRequest {
    /// An object with arrays `nodes` and `edges`.
    #[validate(custom(function = "rules::graph_json"))]
    #[schema(value_type = Object)]
    pub graph_json: Value,
    /// The variables this version defines (an object).
    #[validate(custom(function = "rules::json_object"))]
    #[schema(value_type = Option<Object>)]
    pub variables_def: Option<Value>,
    #[validate(custom(function = "rules::description"))]
    pub changelog: Option<String>,
    /// Recorded on the audit row.
    #[validate(custom(function = "rules::note"))]
    pub note: Option<String>,
    /// When given, must equal the script's `latestVersion`, else 409 VERSION_CONFLICT.
    #[validate(range(min = 0))]
    #[schema(minimum = 0)]
    pub base_version: Option<i32>,
}

impl RequestBody for CreateVersionRequest {
    fn limit(limits: &LimitsSettings) -> usize {
        limits.versions_body_bytes
    }
}

/// `POST /scripts/:id/versions/:version/publish` (the body may be empty).
#[derive(Debug, Default, Deserialize, Validate, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"note": "go live"}))]
pub struct PublishRequestBody {
    #[validate(custom(function = "rules::note"))]
    pub note: Option<String>,
}

impl RequestBody for PublishRequestBody {
    fn empty_is_default() -> bool {
        true
    }
}

// ---------- queries ----------

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListScriptsQuery {
    /// Alternative to the `x-tenant-id` header.
    pub tenant_id: Option<String>,
    /// Case-insensitive substring of name or slug (1..100 characters after trimming).
    pub q: Option<String>,
    /// Exact slug.
    pub slug: Option<String>,
    pub status: Option<ScriptStatus>,
    /// 1..200, default 50.
    pub limit: Option<u32>,
    /// `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1..200, default 50.
    pub limit: Option<u32>,
    /// `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

// ---------- helpers ----------

fn with_etag(mut res: HttpResponse, script: &Script) -> HttpResponse {
    if let Ok(v) = header::HeaderValue::from_str(&script.etag()) {
        res.headers_mut().insert(header::ETAG, v);
    }
    res
}

fn header_str(req: &HttpRequest, name: header::HeaderName) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn script_of(
    client: &deadpool_postgres::Object,
    tenant: &str,
    id: uuid::Uuid,
) -> Result<Script, ApiError> {
    sql::get_script(client, tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found("script"))
}

// ---------- handlers ----------

/// Create a script (status DRAFT, latestVersion 0).
#[utoipa::path(
    tag = "scripts",
    params(crate::openapi::TenantHeader),
    request_body = CreateScriptRequest,
    responses(
        (status = 201, description = "Created", body = ScriptView,
            headers(("Location" = String, description = "/scripts/{id}"), ("ETag" = String))),
        (status = 400, description = "VALIDATION_FAILED, MALFORMED_JSON, TENANT_REQUIRED, TENANT_MISMATCH", body = ErrorBody),
        (status = 409, description = "SLUG_TAKEN", body = ErrorBody),
    )
)]
#[post("/scripts")]
pub async fn create_script(
    ctx: Ctx,
    state: State,
    req: HttpRequest,
    body: JsonBody<CreateScriptRequest>,
) -> Result<HttpResponse, ApiError> {
    let tenant = ctx.tenant(body.tenant_id.as_deref())?;
    let claim = match idem::begin(&state, &req, &ctx.caller, &tenant, &body.raw).await {
        Begun::Respond(res) => return Ok(res),
        Begun::Proceed(claim) => claim,
    };
    let result = async {
        body.validate().map_err(to_api)?;
        let b = body.value;
        let new = NewScript {
            name: b.name,
            slug: b.slug,
            description: b.description,
            labels: b.labels.unwrap_or_default(),
            intents: b.intents.unwrap_or_default(),
            language_codes: b.language_codes.unwrap_or_default(),
            embedding_key: b.embedding_key,
        };
        let completion = idem::completion(&claim, render_created_script);
        let script = ops::create_script(
            &state.pool,
            &tenant,
            &ctx.caller.actor_id,
            new,
            completion.as_ref(),
        )
        .await?;
        Ok(idem::to_response(&render_created_script(&script)))
    }
    .await;
    idem::finish(&state, claim, result).await
}

fn render_created_script(s: &Script) -> Recorded {
    idem::recorded_json(
        StatusCode::CREATED,
        vec![
            ("location", format!("/scripts/{}", s.id)),
            ("etag", s.etag()),
        ],
        &ScriptView {
            script: s.clone(),
            active_version: None,
        },
    )
}

fn render_created_version(v: &Version) -> Recorded {
    idem::recorded_json(
        StatusCode::CREATED,
        vec![(
            "location",
            format!("/scripts/{}/versions/{}", v.script_id, v.version),
        )],
        v,
    )
}

/// List the tenant's scripts, newest first.
#[utoipa::path(
    tag = "scripts",
    params(crate::openapi::TenantHeader, ListScriptsQuery),
    responses(
        (status = 200, description = "A page of scripts", body = Page<Script>),
        (status = 400, description = "VALIDATION_FAILED (bad limit, cursor, status or q), TENANT_REQUIRED, TENANT_MISMATCH", body = ErrorBody),
    )
)]
#[get("/scripts")]
pub async fn list_scripts(
    ctx: Ctx,
    query: Query<ListScriptsQuery>,
    db: Db,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let tenant = ctx.tenant(query.tenant_id.as_deref())?;
    no_nul("q", query.q.as_deref().unwrap_or_default())?;
    no_nul("slug", query.slug.as_deref().unwrap_or_default())?;
    let q = query.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
    if q.is_some_and(|q| q.chars().count() > 100) {
        return Err(ApiError::field("q", "must be at most 100 characters"));
    }
    let status = query.status.map(|s| s.as_str()).unwrap_or_default();
    let page = PageRequest::parse(
        query.limit,
        query.cursor.as_deref(),
        &[
            tenant.as_str(),
            q.unwrap_or_default(),
            query.slug.as_deref().unwrap_or_default(),
            status,
        ],
    )?;
    let filter = sql::ScriptFilter {
        q: q.map(sql::like_escape),
        slug: query.slug.clone(),
        status: query.status,
    };
    let client = db.0;
    let rows = sql::list_scripts(
        &client,
        tenant.as_str(),
        &filter,
        page.after_time()?,
        page.fetch(),
    )
    .await?;
    Ok(HttpResponse::Ok().json(page.finish(rows, |s| Key::time(s.created_at, s.id))))
}

/// A script with its active version; `If-None-Match` answers 304.
#[utoipa::path(
    tag = "scripts",
    params(crate::openapi::TenantHeader, ("id" = uuid::Uuid, Path, description = "Script id"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier response")),
    responses(
        (status = 200, description = "The script", body = ScriptView, headers(("ETag" = String))),
        (status = 304, description = "Not modified"),
        (status = 400, description = "VALIDATION_FAILED (id not a UUID), TENANT_REQUIRED", body = ErrorBody),
        (status = 404, description = "NOT_FOUND", body = ErrorBody),
    )
)]
#[get("/scripts/{id}")]
pub async fn get_script(
    ctx: Ctx,
    req: HttpRequest,
    path: web::Path<String>,
    db: Db,
) -> Result<HttpResponse, ApiError> {
    let id = path_uuid("id", &path)?;
    let tenant = ctx.tenant(None)?;
    let client = db.0;
    let (script, active_version) = sql::get_script_view(&client, tenant.as_str(), id)
        .await?
        .ok_or_else(|| ApiError::not_found("script"))?;
    if let Some(inm) = header_str(&req, header::IF_NONE_MATCH) {
        if ops::if_match_ok(&inm, &script) {
            return Ok(with_etag(HttpResponse::NotModified().finish(), &script));
        }
    }
    let res = HttpResponse::Ok().json(ScriptView {
        script: script.clone(),
        active_version,
    });
    Ok(with_etag(res, &script))
}

/// Change a script (JSON merge patch); `If-Match` is honoured.
#[utoipa::path(
    tag = "scripts",
    params(crate::openapi::TenantHeader, ("id" = uuid::Uuid, Path, description = "Script id"),
        ("If-Match" = Option<String>, Header, description = "The ETag the change is based on, or *")),
    request_body = PatchScriptRequest,
    responses(
        (status = 200, description = "The script after the change", body = ScriptView, headers(("ETag" = String))),
        (status = 400, description = "VALIDATION_FAILED (empty patch, null on a required field), MALFORMED_JSON", body = ErrorBody),
        (status = 404, description = "NOT_FOUND", body = ErrorBody),
        (status = 409, description = "SLUG_TAKEN, INVALID_STATUS_TRANSITION, NO_ACTIVE_VERSION, SCRIPT_ARCHIVED", body = ErrorBody),
        (status = 412, description = "PRECONDITION_FAILED", body = ErrorBody),
    )
)]
#[patch("/scripts/{id}")]
pub async fn patch_script(
    ctx: Ctx,
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
    body: JsonBody<PatchScriptRequest>,
) -> Result<HttpResponse, ApiError> {
    let id = path_uuid("id", &path)?;
    let tenant = ctx.tenant(None)?;
    let (patch, note) = body.value.into_domain()?;
    let view = state
        .scripts
        .patch(
            id,
            PatchRequest {
                tenant,
                actor: ctx.caller.actor_id.clone(),
                if_match: header_str(&req, header::IF_MATCH),
                patch,
                note,
            },
        )
        .await?;
    let script = view.script.clone();
    Ok(with_etag(HttpResponse::Ok().json(view), &script))
}

/// Save a new immutable version (number = latestVersion + 1).
#[utoipa::path(
    tag = "versions",
    params(crate::openapi::TenantHeader, ("id" = uuid::Uuid, Path, description = "Script id")),
    request_body = CreateVersionRequest,
    responses(
        (status = 201, description = "Created", body = Version,
            headers(("Location" = String, description = "/scripts/{id}/versions/{version}"))),
        (status = 400, description = "VALIDATION_FAILED, MALFORMED_JSON", body = ErrorBody),
        (status = 404, description = "NOT_FOUND", body = ErrorBody),
        (status = 409, description = "VERSION_CONFLICT (details.latestVersion), SCRIPT_ARCHIVED", body = ErrorBody),
        (status = 413, description = "PAYLOAD_TOO_LARGE (limits.versions_body_bytes)", body = ErrorBody),
    )
)]
#[post("/scripts/{id}/versions")]
pub async fn create_version(
    ctx: Ctx,
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
    body: JsonBody<CreateVersionRequest>,
) -> Result<HttpResponse, ApiError> {
    let id = path_uuid("id", &path)?;
    let tenant = ctx.tenant(None)?;
    let claim = match idem::begin(&state, &req, &ctx.caller, &tenant, &body.raw).await {
        Begun::Respond(res) => return Ok(res),
        Begun::Proceed(claim) => claim,
    };
    let result = async {
        body.validate().map_err(to_api)?;
        let b = body.value;
        let version = state
            .scripts
            .create_version(
                id,
                VersionRequest {
                    tenant,
                    actor: ctx.caller.actor_id.clone(),
                    new: NewVersion {
                        graph_json: b.graph_json,
                        variables_def: b.variables_def,
                        changelog: b.changelog,
                        note: b.note,
                        base_version: b.base_version,
                    },
                    idem: idem::completion(&claim, render_created_version),
                },
            )
            .await?;
        Ok(idem::to_response(&render_created_version(&version)))
    }
    .await;
    idem::finish(&state, claim, result).await
}

/// Publish a version (PUBLISH), or an older one (ROLLBACK); a no-op when already active.
#[utoipa::path(
    tag = "versions",
    params(crate::openapi::TenantHeader, ("id" = uuid::Uuid, Path, description = "Script id"),
        ("version" = i32, Path, minimum = 1, description = "Version number")),
    request_body(content = PublishRequestBody, description = "May be empty"),
    responses(
        (status = 200, description = "The script with its new active version", body = ScriptView, headers(("ETag" = String))),
        (status = 400, description = "VALIDATION_FAILED (version not an integer)", body = ErrorBody),
        (status = 404, description = "NOT_FOUND (script or version)", body = ErrorBody),
        (status = 409, description = "SCRIPT_ARCHIVED", body = ErrorBody),
    )
)]
#[post("/scripts/{id}/versions/{version}/publish")]
pub async fn publish_version(
    ctx: Ctx,
    state: State,
    path: web::Path<(String, String)>,
    body: JsonBody<PublishRequestBody>,
) -> Result<HttpResponse, ApiError> {
    let id = path_uuid("id", &path.0)?;
    let version = path_version(&path.1)?;
    let tenant = ctx.tenant(None)?;
    body.validate().map_err(to_api)?;
    let view = state
        .scripts
        .publish(
            id,
            PublishRequest {
                tenant,
                actor: ctx.caller.actor_id.clone(),
                version,
                note: body.value.note,
            },
        )
        .await?;
    let script = view.script.clone();
    Ok(with_etag(HttpResponse::Ok().json(view), &script))
}

/// A script's versions, highest first (without graphJson and variablesDef).
#[utoipa::path(
    tag = "versions",
    params(crate::openapi::TenantHeader, ("id" = uuid::Uuid, Path, description = "Script id"), PageQuery),
    responses(
        (status = 200, description = "A page of versions", body = Page<VersionSummary>),
        (status = 400, description = "VALIDATION_FAILED", body = ErrorBody),
        (status = 404, description = "NOT_FOUND", body = ErrorBody),
    )
)]
#[get("/scripts/{id}/versions")]
pub async fn list_versions(
    ctx: Ctx,
    path: web::Path<String>,
    query: Query<PageQuery>,
    db: Db,
) -> Result<HttpResponse, ApiError> {
    let id = path_uuid("id", &path)?;
    let tenant = ctx.tenant(None)?;
    let page = PageRequest::parse(
        query.limit,
        query.cursor.as_deref(),
        &["versions", &id.to_string()],
    )?;
    let client = db.0;
    let script = script_of(&client, tenant.as_str(), id).await?;
    let rows = sql::list_versions(
        &client,
        id,
        script.active_version_id,
        page.after_version()?,
        page.fetch(),
    )
    .await?;
    Ok(HttpResponse::Ok().json(page.finish(rows, |v| Key::Version(v.version))))
}

/// One version in full.
#[utoipa::path(
    tag = "versions",
    params(crate::openapi::TenantHeader, ("id" = uuid::Uuid, Path, description = "Script id"),
        ("version" = i32, Path, minimum = 1, description = "Version number")),
    responses(
        (status = 200, description = "The version", body = Version),
        (status = 400, description = "VALIDATION_FAILED", body = ErrorBody),
        (status = 404, description = "NOT_FOUND", body = ErrorBody),
    )
)]
#[get("/scripts/{id}/versions/{version}")]
pub async fn get_version(
    ctx: Ctx,
    path: web::Path<(String, String)>,
    db: Db,
) -> Result<HttpResponse, ApiError> {
    let id = path_uuid("id", &path.0)?;
    let version = path_version(&path.1)?;
    let tenant = ctx.tenant(None)?;
    let client = db.0;
    let script = script_of(&client, tenant.as_str(), id).await?;
    let v = sql::get_version(&client, id, version, script.active_version_id)
        .await?
        .ok_or_else(|| ApiError::not_found("version"))?;
    Ok(HttpResponse::Ok().json(v))
}

/// A script's audit trail, newest first.
#[utoipa::path(
    tag = "audit",
    params(crate::openapi::TenantHeader, ("id" = uuid::Uuid, Path, description = "Script id"), PageQuery),
    responses(
        (status = 200, description = "A page of audit entries", body = Page<AuditEntry>),
        (status = 400, description = "VALIDATION_FAILED", body = ErrorBody),
        (status = 404, description = "NOT_FOUND", body = ErrorBody),
    )
)]
#[get("/scripts/{id}/audit")]
pub async fn list_audit(
    ctx: Ctx,
    path: web::Path<String>,
    query: Query<PageQuery>,
    db: Db,
) -> Result<HttpResponse, ApiError> {
    let id = path_uuid("id", &path)?;
    let tenant = ctx.tenant(None)?;
    let page = PageRequest::parse(
        query.limit,
        query.cursor.as_deref(),
        &["audit", &id.to_string()],
    )?;
    let client = db.0;
    script_of(&client, tenant.as_str(), id).await?;
    let rows = sql::list_audit(&client, id, page.after_time()?, page.fetch()).await?;
    Ok(HttpResponse::Ok().json(page.finish(rows, |a| Key::time(a.created_at, a.id))))
}
