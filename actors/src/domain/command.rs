//! Commands in the outbox.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::domain::{CommandName, NewEvent};

status_enum!(CommandStatus {
    Pending = "PENDING",
    Processing = "PROCESSING",
    Completed = "COMPLETED",
    Failed = "FAILED",
});

/// A command as accepted at the edge.
#[derive(Debug, Clone)]
pub struct NewCommand {
    pub tenant_id: String,
    pub command: CommandName,
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
    /// The completion event, once the command completed or failed.
    pub result: Option<Completed>,
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

/// A command's completion event as recorded on its row.
#[derive(Debug, Clone, PartialEq)]
pub struct Completed {
    pub event: NewEvent,
    pub occurred_at: DateTime<Utc>,
}

/// What `POST /commands` answers.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub command_id: Uuid,
    pub correlation_id: Uuid,
}
