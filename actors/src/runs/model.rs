//! Runs and run variables as clients see them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::ts;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "RUNNING",
            RunStatus::Succeeded => "SUCCEEDED",
            RunStatus::Failed => "FAILED",
            RunStatus::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "RUNNING" => Some(RunStatus::Running),
            "SUCCEEDED" => Some(RunStatus::Succeeded),
            "FAILED" => Some(RunStatus::Failed),
            "CANCELLED" => Some(RunStatus::Cancelled),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    pub id: Uuid,
    pub tenant_id: String,
    pub script_id: Uuid,
    pub version: i32,
    pub started_by_id: Option<String>,
    pub connector_type: Option<String>,
    pub connector_key: Option<String>,
    pub status: RunStatus,
    #[serde(serialize_with = "ts::serialize")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: DateTime<Utc>,
    #[serde(serialize_with = "ts::option::serialize")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ended_at: Option<DateTime<Utc>>,
}

/// A run variable: exactly one of the four values is set; all four are shown.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunVariable {
    pub key: String,
    pub str_val: Option<String>,
    pub num_val: Option<f64>,
    pub bool_val: Option<bool>,
    #[schema(value_type = Option<Object>)]
    pub json_val: Option<Value>,
    #[serde(serialize_with = "ts::serialize")]
    #[schema(value_type = String, format = DateTime)]
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
    pub key: String,
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
