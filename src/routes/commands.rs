//! Commands: accepted into the transactional outbox, completed asynchronously.

use std::sync::LazyLock;

use actix_web::http::StatusCode;
use actix_web::{get, post, web, HttpRequest, HttpResponse};
use actors::domain::ts;
use actors::idempotency::Recorded;
use actors::outbox::model::{CommandStatus, NewCommand};
use actors::outbox::Accepted;
use actors::store::commands as sql;
use actors::ErrorCode;
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;
use validator::{Validate, ValidationError};

use crate::error::{ApiError, ErrorBody};
use crate::extract::{path_uuid, JsonBody, RequestBody};
use crate::idempotency::{self as idem, Begun};
use crate::settings::AuthMode;
use crate::settings::LimitsSettings;
use crate::state::{Db, State};
use crate::tenant::Ctx;
use crate::validation::{json_object, to_api};

static COMMAND_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[A-Z][A-Za-z0-9]*(\.[A-Z][A-Za-z0-9]*)+\.v[0-9]+$").expect("command regex")
});

fn command_name(v: &str) -> Result<(), ValidationError> {
    if v.len() <= 200 && COMMAND_RE.is_match(v) {
        Ok(())
    } else {
        let mut e = ValidationError::new("pattern");
        e.message = Some(r"must match ^[A-Z][A-Za-z0-9]*(\.[A-Z][A-Za-z0-9]*)+\.v[0-9]+$, e.g. Contacts.UpsertAndLink.v1".into());
        Err(e)
    }
}

fn uuid_text(v: &str) -> Result<(), ValidationError> {
    Uuid::parse_str(v).map(|_| ()).map_err(|_| {
        let mut e = ValidationError::new("uuid");
        e.message = Some("must be a UUID".into());
        e
    })
}

#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommandActor {
    /// Who the command is on behalf of (in `jwt` mode: the token's `sub`).
    #[validate(length(min = 1, max = 200, message = "must be 1..200 characters"))]
    #[schema(min_length = 1, max_length = 200)]
    pub user_id: String,
}

/// `POST /commands`.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"command": "Contacts.UpsertAndLink.v1", "actor": {"userId": "u_1"},
    "context": {"applicationId": "app_1"}, "payload": {"contacts": [{"role": "applicant", "email": "a@example.com"}]}}))]
pub struct CommandRequest {
    #[validate(custom(function = "command_name"))]
    #[schema(
        max_length = 200,
        pattern = "^[A-Z][A-Za-z0-9]*(\\.[A-Z][A-Za-z0-9]*)+\\.v[0-9]+$"
    )]
    pub command: String,
    /// A UUID; generated (v7) when absent. Unique per tenant.
    #[validate(custom(function = "uuid_text"))]
    #[schema(format = Uuid)]
    pub correlation_id: Option<String>,
    #[validate(nested)]
    pub actor: CommandActor,
    /// An object; default `{}`.
    #[validate(custom(function = "json_object"))]
    #[schema(value_type = Option<Object>)]
    pub context: Option<Value>,
    /// An object; default `{}`.
    #[validate(custom(function = "json_object"))]
    #[schema(value_type = Option<Object>)]
    pub payload: Option<Value>,
}

impl RequestBody for CommandRequest {
    fn limit(limits: &LimitsSettings) -> usize {
        limits.commands_body_bytes
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommandAccepted {
    pub correlation_id: Uuid,
    pub command_id: Uuid,
    pub status: CommandStatus,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommandView {
    pub command_id: Uuid,
    pub command: String,
    pub correlation_id: Uuid,
    pub status: CommandStatus,
    pub attempts: i32,
    #[serde(serialize_with = "ts::serialize")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: chrono::DateTime<chrono::Utc>,
    #[serde(serialize_with = "ts::serialize")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// The completion event (as streamed), or null while not completed.
    #[schema(value_type = Option<actors::events::model::EventData>)]
    pub result: Option<Value>,
}

/// Accept a command into the outbox; its completion arrives on `/events/stream`.
#[utoipa::path(
    tag = "commands",
    params(crate::openapi::TenantHeader),
    request_body = CommandRequest,
    responses(
        (status = 202, description = "Accepted (committed to the outbox)", body = CommandAccepted,
            headers(("Location" = String, description = "/commands/{correlationId}"))),
        (status = 400, description = "VALIDATION_FAILED, MALFORMED_JSON, TENANT_REQUIRED", body = ErrorBody),
        (status = 409, description = "CORRELATION_ID_TAKEN", body = ErrorBody),
        (status = 413, description = "PAYLOAD_TOO_LARGE", body = ErrorBody),
    )
)]
#[post("/commands")]
pub async fn post_command(
    ctx: Ctx,
    state: State,
    req: HttpRequest,
    body: JsonBody<CommandRequest>,
) -> Result<HttpResponse, ApiError> {
    let tenant = ctx.tenant(None)?;
    // Authorization comes before the key is looked up: a refused caller
    // neither claims nor reads anyone's key.
    if state.auth.mode() == AuthMode::Jwt
        && body.value.actor.user_id != ctx.caller.actor_id.as_str()
    {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "actor.userId must be the token's subject",
        ));
    }
    let claim = match idem::begin(&state, &req, &ctx.caller, &tenant, &body.raw).await {
        Begun::Respond(res) => return Ok(res),
        Begun::Proceed(claim) => claim,
    };
    let result = async {
        body.validate().map_err(to_api)?;
        let b = body.value;
        let correlation_id = match b.correlation_id.as_deref() {
            Some(c) => Uuid::parse_str(c)
                .map_err(|_| ApiError::field("correlationId", "must be a UUID"))?,
            None => Uuid::now_v7(),
        };
        let command = NewCommand {
            tenant_id: tenant.to_string(),
            command: b.command,
            correlation_id,
            actor_user_id: b.actor.user_id,
            created_by_id: ctx.caller.actor_id.to_string(),
            context: b
                .context
                .unwrap_or_else(|| Value::Object(Default::default())),
            payload: b
                .payload
                .unwrap_or_else(|| Value::Object(Default::default())),
        };
        let completion = idem::completion(&claim, render_accepted);
        let accepted = actors::outbox::accept(&state.pool, &command, completion.as_ref()).await?;
        Ok(idem::to_response(&render_accepted(&accepted)))
    }
    .await;
    idem::finish(&state, claim, result).await
}

fn render_accepted(a: &Accepted) -> Recorded {
    idem::recorded_json(
        StatusCode::ACCEPTED,
        vec![("location", format!("/commands/{}", a.correlation_id))],
        &CommandAccepted {
            correlation_id: a.correlation_id,
            command_id: a.command_id,
            status: CommandStatus::Pending,
        },
    )
}

/// A command's status, attempts and result.
#[utoipa::path(
    tag = "commands",
    params(crate::openapi::TenantHeader, ("correlationId" = Uuid, Path, description = "The command's correlation id")),
    responses(
        (status = 200, description = "The command", body = CommandView),
        (status = 400, description = "VALIDATION_FAILED (not a UUID), TENANT_REQUIRED", body = ErrorBody),
        (status = 404, description = "NOT_FOUND", body = ErrorBody),
    )
)]
#[get("/commands/{correlationId}")]
pub async fn get_command(
    ctx: Ctx,
    path: web::Path<String>,
    db: Db,
) -> Result<HttpResponse, ApiError> {
    let correlation_id = path_uuid("correlationId", &path)?;
    let tenant = ctx.tenant(None)?;
    let client = db.0;
    let c = sql::get_by_correlation(&client, tenant.as_str(), correlation_id)
        .await?
        .ok_or_else(|| ApiError::not_found("command"))?;
    Ok(HttpResponse::Ok().json(CommandView {
        command_id: c.id,
        command: c.command,
        correlation_id: c.correlation_id,
        status: c.status,
        attempts: c.attempts,
        created_at: c.created_at,
        updated_at: c.updated_at,
        result: c.result,
    }))
}
