//! Runs and run variables.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::domain::{Error, ErrorCode, NewEvent, VarKey};

status_enum!(RunStatus {
    Running = "RUNNING",
    Succeeded = "SUCCEEDED",
    Failed = "FAILED",
    Cancelled = "CANCELLED",
});

#[derive(Debug, Clone)]
pub struct Run {
    pub id: Uuid,
    pub tenant_id: String,
    pub script_id: Uuid,
    pub version: i32,
    pub started_by_id: Option<String>,
    pub connector_type: Option<String>,
    pub connector_key: Option<String>,
    pub status: RunStatus,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// The highest committed `seq` of the runner stream (0: never streamed).
    pub stream_seq: i64,
    /// Start, variable writes, finish, pings of an open stream.
    pub last_activity_at: DateTime<Utc>,
}

/// A run variable: exactly one of the four values is set; all four are shown.
#[derive(Debug, Clone, PartialEq)]
pub struct RunVariable {
    pub key: String,
    pub str_val: Option<String>,
    pub num_val: Option<f64>,
    pub bool_val: Option<bool>,
    pub json_val: Option<Value>,
    pub updated_at: DateTime<Utc>,
}

/// One validated value.
#[derive(Debug, Clone, PartialEq)]
pub enum VarValue {
    Str(String),
    Num(f64),
    Bool(bool),
    Json(Value),
}

/// One validated upsert item.
#[derive(Debug, Clone, PartialEq)]
pub struct VarUpsert {
    pub key: VarKey,
    pub value: VarValue,
}

/// What `POST /runs` starts.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub script_id: Uuid,
    pub version: Option<i32>,
    pub started_by_id: Option<String>,
    pub connector_type: Option<String>,
    pub connector_key: Option<String>,
}

pub fn run_finished() -> Error {
    Error::rejected(ErrorCode::RunFinished, "the run has finished")
}

/// An event of `run`, correlated by the run id.
pub fn run_event(run: &Run, name: &str, payload: Value) -> NewEvent {
    NewEvent {
        tenant_id: run.tenant_id.clone(),
        name: name.to_string(),
        correlation_id: Some(run.id.to_string()),
        success: true,
        payload,
    }
}
