//! Runs and run variables.

use std::collections::HashMap;

use actix_web::http::StatusCode;
use actix_web::{get, post, web, HttpRequest, HttpResponse};
use actors::idempotency::Recorded;
use actors::pagination::Key;
use actors::runs::model::{NewRun, Run, RunStatus, RunVariable, VarUpsert, VarValue};
use actors::store::runs as sql;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use validator::Validate;

use crate::error::{ApiError, ErrorBody, FieldError};
use crate::extract::{path_uuid, JsonBody, Query, RequestBody};
use crate::idempotency::{self as idem, Begun};
use crate::page::{Page, PageRequest};
use crate::settings::LimitsSettings;
use crate::state::{Db, State};
use crate::tenant::Ctx;
use crate::validation::{self as rules, to_api};

const MAX_ITEMS: usize = 500;

fn is_key(k: &str) -> bool {
    (1..=200).contains(&k.len())
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
}

/// `POST /runs`.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"scriptId": "0193a0a0-0000-7000-8000-000000000001", "connectorType": "whatsapp", "connectorKey": "+5511999990000"}))]
pub struct StartRunRequest {
    /// Alternative to the `x-tenant-id` header.
    pub tenant_id: Option<String>,
    pub script_id: Uuid,
    /// Defaults to the script's active version.
    #[validate(range(min = 1))]
    #[schema(minimum = 1)]
    pub version: Option<i32>,
    /// Defaults to the caller's actor id.
    #[validate(custom(function = "rules::embedding_key"))]
    pub started_by_id: Option<String>,
    #[validate(custom(function = "rules::embedding_key"))]
    pub connector_type: Option<String>,
    #[validate(custom(function = "rules::embedding_key"))]
    pub connector_key: Option<String>,
}

impl RequestBody for StartRunRequest {}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunStarted {
    pub run_id: Uuid,
    pub run: Run,
}

/// One item of `POST /runs/:runId/vars`: exactly one non-null value.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"key": "customer.name", "strVal": "Ana"}))]
pub struct VarItem {
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,200}$")]
    pub key: String,
    pub str_val: Option<String>,
    /// A finite number.
    pub num_val: Option<f64>,
    pub bool_val: Option<bool>,
    /// Any JSON value but null.
    #[schema(value_type = Option<Object>)]
    pub json_val: Option<Value>,
}

/// The body of `POST /runs/:runId/vars`: 1..500 items; the last item per key wins.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(transparent)]
pub struct VarItems(pub Vec<VarItem>);

impl RequestBody for VarItems {
    fn limit(limits: &LimitsSettings) -> usize {
        limits.vars_body_bytes
    }
}

impl VarItems {
    /// Validates every item and keeps the last one per key, in first-seen order.
    fn into_upserts(self) -> Result<Vec<VarUpsert>, ApiError> {
        if self.0.is_empty() || self.0.len() > MAX_ITEMS {
            return Err(ApiError::field(
                "body",
                format!("must hold 1..{MAX_ITEMS} items"),
            ));
        }
        let mut errors = Vec::new();
        let mut out: Vec<VarUpsert> = Vec::with_capacity(self.0.len());
        let mut index: HashMap<String, usize> = HashMap::new();
        for (i, item) in self.0.into_iter().enumerate() {
            if !is_key(&item.key) {
                errors.push(FieldError::new(
                    format!("[{i}].key"),
                    "must match ^[A-Za-z0-9_.:-]{1,200}$",
                ));
            }
            let mut values = Vec::new();
            if let Some(s) = item.str_val {
                values.push(VarValue::Str(s));
            }
            if let Some(n) = item.num_val {
                if !n.is_finite() {
                    errors.push(FieldError::new(
                        format!("[{i}].numVal"),
                        "must be a finite number",
                    ));
                }
                values.push(VarValue::Num(n));
            }
            if let Some(b) = item.bool_val {
                values.push(VarValue::Bool(b));
            }
            if let Some(j) = item.json_val.filter(|j| !j.is_null()) {
                values.push(VarValue::Json(j));
            }
            if values.len() != 1 {
                errors.push(FieldError::new(
                    format!("[{i}]"),
                    "exactly one of strVal, numVal, boolVal, jsonVal must be non-null",
                ));
                continue;
            }
            let upsert = VarUpsert {
                key: item.key,
                value: values.remove(0),
            };
            match index.get(&upsert.key) {
                Some(&at) => out[at] = upsert,
                None => {
                    index.insert(upsert.key.clone(), out.len());
                    out.push(upsert);
                }
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(ApiError::validation(errors))
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VarsUpserted {
    pub run_id: Uuid,
    /// Distinct keys written.
    pub upserted: usize,
    /// The stored values of the keys touched, by key.
    pub vars: Vec<RunVariable>,
}

/// `POST /runs/:runId/finish`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"status": "SUCCEEDED"}))]
pub struct FinishRequest {
    /// SUCCEEDED, FAILED or CANCELLED.
    pub status: RunStatus,
}

impl RequestBody for FinishRequest {}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunWithVars {
    #[serde(flatten)]
    pub run: Run,
    /// Sorted by key.
    pub vars: Vec<RunVariable>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListRunsQuery {
    /// Alternative to the `x-tenant-id` header.
    pub tenant_id: Option<String>,
    pub script_id: Option<Uuid>,
    pub status: Option<RunStatus>,
    /// RFC 3339; inclusive bound on startedAt.
    pub from: Option<String>,
    /// RFC 3339; exclusive bound on startedAt.
    pub to: Option<String>,
    /// 1..200, default 50.
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

fn parse_time(field: &str, v: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    v.map(|s| {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| ApiError::field(field, "must be an RFC 3339 timestamp"))
    })
    .transpose()
}

/// Start a run of a script version (default: the active one).
#[utoipa::path(
    tag = "runs",
    params(crate::openapi::TenantHeader),
    request_body = StartRunRequest,
    responses(
        (status = 201, description = "Started", body = RunStarted, headers(("Location" = String, description = "/runs/{runId}"))),
        (status = 400, description = "VALIDATION_FAILED, MALFORMED_JSON, TENANT_REQUIRED, TENANT_MISMATCH", body = ErrorBody),
        (status = 404, description = "NOT_FOUND (script or version)", body = ErrorBody),
        (status = 409, description = "NO_ACTIVE_VERSION, SCRIPT_ARCHIVED", body = ErrorBody),
    )
)]
#[post("/runs")]
pub async fn start_run(
    ctx: Ctx,
    state: State,
    req: HttpRequest,
    body: JsonBody<StartRunRequest>,
) -> Result<HttpResponse, ApiError> {
    let tenant = ctx.tenant(body.tenant_id.as_deref())?;
    let claim = match idem::begin(&state, &req, &ctx.caller, &tenant, &body.raw).await {
        Begun::Respond(res) => return Ok(res),
        Begun::Proceed(claim) => claim,
    };
    let result = async {
        body.validate().map_err(to_api)?;
        let b = body.value;
        let completion = idem::completion(&claim, render_started);
        let run = actors::runs::ops::start_run(
            &state.pool,
            &tenant,
            &ctx.caller.actor_id,
            NewRun {
                script_id: b.script_id,
                version: b.version,
                started_by_id: b.started_by_id,
                connector_type: b.connector_type,
                connector_key: b.connector_key,
            },
            completion.as_ref(),
        )
        .await?;
        Ok(idem::to_response(&render_started(&run)))
    }
    .await;
    idem::finish(&state, claim, result).await
}

fn render_started(run: &Run) -> Recorded {
    idem::recorded_json(
        StatusCode::CREATED,
        vec![("location", format!("/runs/{}", run.id))],
        &RunStarted {
            run_id: run.id,
            run: run.clone(),
        },
    )
}

/// Upsert run variables by key; acknowledged means committed.
#[utoipa::path(
    tag = "runs",
    params(crate::openapi::TenantHeader, ("runId" = Uuid, Path, description = "Run id")),
    request_body = VarItems,
    responses(
        (status = 200, description = "Committed", body = VarsUpserted),
        (status = 400, description = "VALIDATION_FAILED (items, key, value), MALFORMED_JSON", body = ErrorBody),
        (status = 404, description = "NOT_FOUND", body = ErrorBody),
        (status = 409, description = "RUN_FINISHED", body = ErrorBody),
        (status = 413, description = "PAYLOAD_TOO_LARGE (limits.vars_body_bytes)", body = ErrorBody),
        (status = 503, description = "UNAVAILABLE: the run's queue is full (Retry-After)", body = ErrorBody),
    )
)]
#[post("/runs/{runId}/vars")]
pub async fn upsert_vars(
    ctx: Ctx,
    state: State,
    path: web::Path<String>,
    body: JsonBody<VarItems>,
) -> Result<HttpResponse, ApiError> {
    let run_id = path_uuid("runId", &path)?;
    let tenant = ctx.tenant(None)?;
    let items = body.value.into_upserts()?;
    let done = state.runs.upsert(run_id, tenant, items).await?;
    Ok(HttpResponse::Ok().json(VarsUpserted {
        run_id,
        upserted: done.upserted,
        vars: done.vars,
    }))
}

/// Finish a run (after its queued upserts).
#[utoipa::path(
    tag = "runs",
    params(crate::openapi::TenantHeader, ("runId" = Uuid, Path, description = "Run id")),
    request_body = FinishRequest,
    responses(
        (status = 200, description = "The finished run", body = Run),
        (status = 400, description = "VALIDATION_FAILED (status RUNNING or unknown)", body = ErrorBody),
        (status = 404, description = "NOT_FOUND", body = ErrorBody),
        (status = 409, description = "RUN_FINISHED", body = ErrorBody),
    )
)]
#[post("/runs/{runId}/finish")]
pub async fn finish_run(
    ctx: Ctx,
    state: State,
    path: web::Path<String>,
    body: JsonBody<FinishRequest>,
) -> Result<HttpResponse, ApiError> {
    let run_id = path_uuid("runId", &path)?;
    let tenant = ctx.tenant(None)?;
    if body.status == RunStatus::Running {
        return Err(ApiError::field(
            "status",
            "must be SUCCEEDED, FAILED or CANCELLED",
        ));
    }
    let run = state.runs.finish(run_id, tenant, body.value.status).await?;
    Ok(HttpResponse::Ok().json(run))
}

/// The tenant's runs, newest startedAt first.
#[utoipa::path(
    tag = "runs",
    params(crate::openapi::TenantHeader, ListRunsQuery),
    responses(
        (status = 200, description = "A page of runs", body = Page<Run>),
        (status = 400, description = "VALIDATION_FAILED (from > to, bad time, limit, cursor)", body = ErrorBody),
    )
)]
#[get("/runs")]
pub async fn list_runs(
    ctx: Ctx,
    query: Query<ListRunsQuery>,
    db: Db,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let tenant = ctx.tenant(q.tenant_id.as_deref())?;
    let from = parse_time("from", q.from.as_deref())?;
    let to = parse_time("to", q.to.as_deref())?;
    if let (Some(f), Some(t)) = (from, to) {
        if f > t {
            return Err(ApiError::field("from", "must not be after to"));
        }
    }
    let script = q.script_id.map(|s| s.to_string()).unwrap_or_default();
    let status = q.status.map(|s| s.as_str()).unwrap_or_default();
    let (from_s, to_s) = (
        from.map(|t| t.timestamp_millis().to_string())
            .unwrap_or_default(),
        to.map(|t| t.timestamp_millis().to_string())
            .unwrap_or_default(),
    );
    let page = PageRequest::parse(
        q.limit,
        q.cursor.as_deref(),
        &["runs", tenant.as_str(), &script, status, &from_s, &to_s],
    )?;
    let filter = sql::RunFilter {
        script_id: q.script_id,
        status: q.status,
        from,
        to,
    };
    let client = db.0;
    let rows = sql::list_runs(
        &client,
        tenant.as_str(),
        &filter,
        page.after_time()?,
        page.fetch(),
    )
    .await?;
    Ok(HttpResponse::Ok().json(page.finish(rows, |r| Key::time(r.started_at, r.id))))
}

/// A run with its variables sorted by key.
#[utoipa::path(
    tag = "runs",
    params(crate::openapi::TenantHeader, ("runId" = Uuid, Path, description = "Run id")),
    responses(
        (status = 200, description = "The run", body = RunWithVars),
        (status = 400, description = "VALIDATION_FAILED", body = ErrorBody),
        (status = 404, description = "NOT_FOUND", body = ErrorBody),
    )
)]
#[get("/runs/{runId}")]
pub async fn get_run(ctx: Ctx, path: web::Path<String>, db: Db) -> Result<HttpResponse, ApiError> {
    let run_id = path_uuid("runId", &path)?;
    let tenant = ctx.tenant(None)?;
    let client = db.0;
    let run = sql::get_run(&client, run_id)
        .await?
        .filter(|r| r.tenant_id == tenant.as_str())
        .ok_or_else(|| ApiError::not_found("run"))?;
    let vars = sql::list_vars(&client, run_id).await?;
    Ok(HttpResponse::Ok().json(RunWithVars { run, vars }))
}
