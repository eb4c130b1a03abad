//! Commands in the outbox.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CommandStatus {
    Pending,
    Processing,
    Completed,
    Failed,
}

impl CommandStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Pending => "PENDING",
            CommandStatus::Processing => "PROCESSING",
            CommandStatus::Completed => "COMPLETED",
            CommandStatus::Failed => "FAILED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "PENDING" => Some(CommandStatus::Pending),
            "PROCESSING" => Some(CommandStatus::Processing),
            "COMPLETED" => Some(CommandStatus::Completed),
            "FAILED" => Some(CommandStatus::Failed),
            _ => None,
        }
    }
}

/// A command as accepted at the edge.
#[derive(Debug, Clone)]
pub struct NewCommand {
    pub tenant_id: String,
    pub command: String,
    pub correlation_id: Uuid,
    pub actor_user_id: String,
    pub created_by_id: String,
    pub context: Value,
    pub payload: Value,
}

/// A row of `command_outbox`.
#[derive(Debug, Clone)]
pub struct Command {
    pub id: Uuid,
    pub tenant_id: String,
    pub command: String,
    pub correlation_id: Uuid,
    pub actor_user_id: String,
    pub context: Value,
    pub payload: Value,
    pub status: CommandStatus,
    pub attempts: i32,
    pub result: Option<Value>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What a dispatcher produces: the completion event of a command.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub event: String,
    pub success: bool,
    pub payload: Value,
}
