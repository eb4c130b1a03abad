//! Commands on the wire.

use actors::domain::{self as core, ActorId, CommandName, TenantId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;
use validator::{Validate, ValidationError};

use crate::dto::events::EventData;
use crate::dto::{ts, wire_enum};
use crate::http::error::ApiError;
use crate::http::extract::RequestBody;
use crate::http::validation::json_object;
use crate::settings::LimitsSettings;

wire_enum!(CommandStatus {
    Pending,
    Processing,
    Completed,
    Failed
});

fn command_name(v: &str) -> Result<(), ValidationError> {
    CommandName::parse(v).map(|_| ()).map_err(|m| {
        let mut e = ValidationError::new("pattern");
        e.message = Some(m.into());
        e
    })
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
    pub result: Option<EventData>,
}

impl From<core::Command> for CommandView {
    fn from(c: core::Command) -> Self {
        CommandView {
            command_id: c.id,
            command: c.command,
            correlation_id: c.correlation_id,
            status: c.status.into(),
            attempts: c.attempts,
            created_at: c.created_at,
            updated_at: c.updated_at,
            result: c.result.map(|r| EventData::new(&r.event, r.occurred_at)),
        }
    }
}

impl CommandRequest {
    /// The command to accept (after `validate`).
    pub fn into_new(
        self,
        tenant: &TenantId,
        created_by: &ActorId,
    ) -> Result<core::NewCommand, ApiError> {
        let correlation_id = match self.correlation_id.as_deref() {
            Some(c) => Uuid::parse_str(c)
                .map_err(|_| ApiError::field("correlationId", "must be a UUID"))?,
            None => Uuid::now_v7(),
        };
        let empty = || Value::Object(Default::default());
        Ok(core::NewCommand {
            tenant_id: tenant.to_string(),
            command: CommandName::parse(&self.command)
                .map_err(|m| ApiError::field("command", m))?,
            correlation_id,
            actor_user_id: self.actor.user_id,
            created_by_id: created_by.to_string(),
            context: self.context.unwrap_or_else(empty),
            payload: self.payload.unwrap_or_else(empty),
        })
    }
}

fn error_text(v: &str) -> Result<(), ValidationError> {
    if v.len() > actors::bus::ERROR_MAX {
        let mut e = ValidationError::new("length");
        e.message = Some(format!("must be at most {} bytes", actors::bus::ERROR_MAX).into());
        return Err(e);
    }
    Ok(())
}

/// `POST /commands/:correlationId/complete`: a handler's answer over HTTP.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"event": "Contacts.Upserted.v1", "success": true,
    "payload": {"contacts": [{"role": "applicant", "contactId": "cnt_1"}]}}))]
pub struct CompleteRequest {
    /// The completion event streamed to `/events/stream`.
    #[validate(custom(function = "command_name"))]
    #[schema(
        max_length = 200,
        pattern = "^[A-Z][A-Za-z0-9]*(\\.[A-Z][A-Za-z0-9]*)+\\.v[0-9]+$"
    )]
    pub event: String,
    /// true: COMPLETED; false: FAILED (no retry).
    pub success: bool,
    /// The event's payload, an object; default `{}`.
    #[validate(custom(function = "json_object"))]
    #[schema(value_type = Option<Object>)]
    pub payload: Option<Value>,
    /// Why it failed (kept as the command's last error), at most 4096 bytes.
    #[validate(custom(function = "error_text"))]
    #[schema(max_length = 4096)]
    pub error: Option<String>,
}

impl RequestBody for CompleteRequest {}

impl CompleteRequest {
    pub fn into_report(self) -> core::Report {
        core::Report {
            event: Some(self.event),
            success: self.success,
            payload: self
                .payload
                .unwrap_or_else(|| Value::Object(Default::default())),
            error: self.error,
            retry: false,
            attempt: None,
        }
    }
}
