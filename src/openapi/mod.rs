//! The OpenAPI document, collected from the handlers' own annotations.

use actix_web::App;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, Required};
use utoipa::Modify;
use utoipa_actix_web::AppExt;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "scriptd",
        description = "Backend of a conversational-script editor: scripts with immutable numbered versions, publishing and rollback, an audit trail, runs with typed variables, a command outbox and a live event stream.\n\nEvery operation accepts an optional `Correlation-Id` request header (1..128 characters of `[A-Za-z0-9._:-]`), logged on the request's span and echoed as the response header of the same name (a new UUID when absent). It is listed as a parameter where no other parameter has the same name.",
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

use crate::http::paths::{self, KEYED, PUBLIC};

/// The errors each operation documents beyond those every route shares
/// (method, path, status, what the status means there): one table instead of
/// the same response lines on every handler.
const ROUTE_ERRORS: &[(&str, &str, u16, &str)] = &[
    (
        "get",
        "/admin/actors",
        400,
        "VALIDATION_FAILED (kind, limit)",
    ),
    ("get", "/admin/actors", 401, "UNAUTHORIZED"),
    ("get", "/admin/actors", 403, "FORBIDDEN: not an admin"),
    ("get", "/metrics", 401, "UNAUTHORIZED"),
    ("get", "/metrics", 403, "FORBIDDEN: not an admin"),
    (
        "post",
        "/commands",
        400,
        "VALIDATION_FAILED, MALFORMED_JSON, TENANT_REQUIRED",
    ),
    ("post", "/commands", 409, "CORRELATION_ID_TAKEN"),
    ("post", "/commands", 413, "PAYLOAD_TOO_LARGE"),
    (
        "get",
        "/commands/{correlationId}",
        400,
        "VALIDATION_FAILED (not a UUID), TENANT_REQUIRED",
    ),
    (
        "post",
        "/commands/{correlationId}/complete",
        400,
        "VALIDATION_FAILED (not a UUID, event, payload, error), MALFORMED_JSON, TENANT_REQUIRED",
    ),
    (
        "post",
        "/commands/{correlationId}/complete",
        403,
        "FORBIDDEN: neither the worker nor the admin role (jwt mode)",
    ),
    (
        "post",
        "/commands/{correlationId}/complete",
        404,
        "NOT_FOUND: no such command in the tenant",
    ),
    (
        "post",
        "/commands/{correlationId}/complete",
        409,
        "COMMAND_FINAL: already COMPLETED or FAILED (details.status); nothing changes",
    ),
    (
        "get",
        "/events/stream",
        400,
        "TENANT_REQUIRED, TENANT_MISMATCH, VALIDATION_FAILED",
    ),
    ("get", "/events/stream", 401, "UNAUTHORIZED"),
    (
        "post",
        "/runs",
        400,
        "VALIDATION_FAILED, MALFORMED_JSON, TENANT_REQUIRED, TENANT_MISMATCH",
    ),
    ("post", "/runs", 404, "NOT_FOUND (script or version)"),
    ("post", "/runs", 409, "NO_ACTIVE_VERSION, SCRIPT_ARCHIVED"),
    (
        "post",
        "/runs/{runId}/vars",
        400,
        "VALIDATION_FAILED (items, key, value), MALFORMED_JSON",
    ),
    ("post", "/runs/{runId}/vars", 409, "RUN_FINISHED"),
    (
        "post",
        "/runs/{runId}/vars",
        413,
        "PAYLOAD_TOO_LARGE (limits.vars_body_bytes)",
    ),
    (
        "post",
        "/runs/{runId}/vars",
        503,
        "UNAVAILABLE: the run's queue is full (Retry-After)",
    ),
    (
        "post",
        "/runs/{runId}/finish",
        400,
        "VALIDATION_FAILED (status RUNNING or unknown)",
    ),
    ("post", "/runs/{runId}/finish", 409, "RUN_FINISHED"),
    (
        "get",
        "/runs/{runId}/stream",
        400,
        "VALIDATION_FAILED (not a UUID, not a WebSocket upgrade), TENANT_REQUIRED, TENANT_MISMATCH",
    ),
    ("get", "/runs/{runId}/stream", 409, "RUN_FINISHED"),
    (
        "get",
        "/runs/{runId}/stream",
        503,
        "UNAVAILABLE: shutting down",
    ),
    (
        "get",
        "/runs",
        400,
        "VALIDATION_FAILED (from > to, bad time, limit, cursor)",
    ),
    (
        "post",
        "/scripts",
        400,
        "VALIDATION_FAILED, MALFORMED_JSON, TENANT_REQUIRED, TENANT_MISMATCH",
    ),
    ("post", "/scripts", 409, "SLUG_TAKEN"),
    (
        "get",
        "/scripts",
        400,
        "VALIDATION_FAILED (bad limit, cursor, status or q), TENANT_REQUIRED, TENANT_MISMATCH",
    ),
    (
        "get",
        "/scripts/{id}",
        400,
        "VALIDATION_FAILED (id not a UUID), TENANT_REQUIRED",
    ),
    (
        "patch",
        "/scripts/{id}",
        400,
        "VALIDATION_FAILED (empty patch, null on a required field), MALFORMED_JSON",
    ),
    (
        "patch",
        "/scripts/{id}",
        409,
        "SLUG_TAKEN, INVALID_STATUS_TRANSITION, NO_ACTIVE_VERSION, SCRIPT_ARCHIVED",
    ),
    ("patch", "/scripts/{id}", 412, "PRECONDITION_FAILED"),
    (
        "post",
        "/scripts/{id}/versions",
        400,
        "VALIDATION_FAILED, MALFORMED_JSON",
    ),
    (
        "post",
        "/scripts/{id}/versions",
        409,
        "VERSION_CONFLICT (details.latestVersion), MERGE_CONFLICT (details.conflicts; merge: true), SCRIPT_ARCHIVED",
    ),
    (
        "post",
        "/scripts/{id}/versions",
        404,
        "NOT_FOUND (script, or the fromVersion to restore)",
    ),
    (
        "get",
        "/scripts/{id}/versions/{version}/diff",
        400,
        "VALIDATION_FAILED (version, against)",
    ),
    (
        "get",
        "/scripts/{id}/versions/{version}/diff",
        404,
        "NOT_FOUND (script, version or against)",
    ),
    (
        "post",
        "/scripts/{id}/versions",
        413,
        "PAYLOAD_TOO_LARGE (limits.versions_body_bytes)",
    ),
    (
        "post",
        "/scripts/{id}/versions/{version}/publish",
        400,
        "VALIDATION_FAILED (version not an integer)",
    ),
    (
        "post",
        "/scripts/{id}/versions/{version}/publish",
        404,
        "NOT_FOUND (script or version)",
    ),
    (
        "post",
        "/scripts/{id}/versions/{version}/publish",
        409,
        "SCRIPT_ARCHIVED",
    ),
];

fn header_param(name: &str, description: &str, pattern: Option<&str>) -> Parameter {
    let mut schema = ObjectBuilder::new().schema_type(Type::String);
    if let Some(p) = pattern {
        schema = schema.pattern(Some(p));
    }
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(schema))
        .build()
}

fn error_response(description: &str, retry_after: bool) -> RefOr<Response> {
    let mut r = ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build(),
    );
    if retry_after {
        r = r.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(Some(ObjectBuilder::new().schema_type(Type::Integer)))
                .description(Some("Seconds to wait"))
                .build(),
        );
    }
    RefOr::T(r.build())
}

/// What every operation shares, added in one place: the `Correlation-Id`
/// header, the errors any route can answer, and per-route auth, rate-limit
/// and idempotency parts.
struct CommonParts;

impl Modify for CommonParts {
    fn modify(&self, openapi: &mut OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let ops = [
                ("get", &mut item.get),
                ("post", &mut item.post),
                ("patch", &mut item.patch),
                ("put", &mut item.put),
                ("delete", &mut item.delete),
            ];
            for (method, op) in ops {
                if let Some(op) = op.as_mut() {
                    common_parts(path, method, op);
                }
            }
        }
    }
}

/// The parts one operation shares with the others.
fn common_parts(path: &str, method: &str, op: &mut utoipa::openapi::path::Operation) {
    let params = op.parameters.get_or_insert_with(Vec::new);
    params.push(RefOr::T(header_param(
        "Correlation-Id",
        "Logged and echoed; generated when absent",
        Some("^[A-Za-z0-9._:-]{1,128}$"),
    )));
    let responses = &mut op.responses.responses;
    let mut add = |code: &str, r: RefOr<Response>| {
        responses.entry(code.to_string()).or_insert(r);
    };
    for (_, _, status, what) in ROUTE_ERRORS
        .iter()
        .filter(|(m, p, ..)| *m == method && *p == path)
    {
        add(&status.to_string(), error_response(what, *status == 503));
    }
    if PUBLIC.contains(&path) {
        op.security = Some(vec![SecurityRequirement::default()]);
    } else {
        add(
            "401",
            error_response(
                "UNAUTHORIZED: missing, malformed or unverified bearer token",
                false,
            ),
        );
    }
    add(
        "400",
        error_response("VALIDATION_FAILED (e.g. a bad Correlation-Id)", false),
    );
    if !paths::is_unlimited(path) {
        add("429", error_response("RATE_LIMITED", true));
        if path != "/events/stream" {
            add(
                "403",
                error_response("FORBIDDEN: the token does not grant this tenant", false),
            );
        }
    }
    if op.request_body.is_some() {
        add("413", error_response("PAYLOAD_TOO_LARGE", false));
        add(
            "415",
            error_response(
                "UNSUPPORTED_MEDIA_TYPE: the body must be application/json",
                false,
            ),
        );
    }
    if path.contains('{') {
        add("404", error_response("NOT_FOUND", false));
    }
    add(
        "500",
        error_response("INTERNAL (no internals in the message)", false),
    );
    add(
        "503",
        error_response("UNAVAILABLE: database unreachable or a queue is full", true),
    );
    if KEYED.contains(&(path, method)) {
        keyed_parts(op);
    }
}

/// What an operation that honours `Idempotency-Key` adds: the header, and the
/// key's refusals (unless the route documents its own 409).
fn keyed_parts(op: &mut utoipa::openapi::path::Operation) {
    let responses = &mut op.responses.responses;
    responses.entry("409".into()).or_insert(error_response(
        "IDEMPOTENCY_KEY_IN_USE (and the route's own conflicts)",
        false,
    ));
    responses.entry("422".into()).or_insert(error_response(
        "IDEMPOTENCY_KEY_REUSED: the key was used with another body",
        false,
    ));
    op.parameters
        .get_or_insert_with(Vec::new)
        .push(RefOr::T(header_param(
            "Idempotency-Key",
            "Replays the first response for the same key and body (24 h by default)",
            Some("^[\\x20-\\x7E]{1,255}$"),
        )));
}

mod refine;

/// The operations as the handlers annotate them, registered on a throwaway
/// app (the route table reads its paths and methods from it).
pub fn collected() -> OpenApi {
    use utoipa::OpenApi as _;
    let (_, paths) = App::new()
        .into_utoipa_app()
        .configure(crate::routes::configure)
        .split_for_parts();
    let mut doc = ApiDoc::openapi();
    doc.merge(paths);
    // After the merge: the parts every collected operation shares.
    CommonParts.modify(&mut doc);
    doc
}

/// The document served at `/openapi.json`: the collected operations with
/// the rules of `refine` applied.
pub fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(collected()).unwrap_or_default();
    refine::refine(&mut doc);
    doc
}

pub fn document_json() -> String {
    serde_json::to_string_pretty(&document()).unwrap_or_default()
}
