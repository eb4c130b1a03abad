//! Events as stored and as streamed.

use bytestring::ByteString;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::domain::ts;

/// An event to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub tenant_id: String,
    pub name: String,
    pub correlation_id: Option<String>,
    pub success: bool,
    pub payload: Value,
}

/// The JSON an SSE client receives as `data:`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"event": "Contacts.Upserted.v1", "correlationId": "01935f4e-0000-7000-8000-000000000001",
    "success": true, "payload": {"contacts": [{"role": "applicant", "contactId": "cnt_1"}]},
    "tenantId": "acme", "occurredAt": "2026-11-30T05:21:00.123Z"}))]
pub struct EventData {
    pub event: String,
    pub correlation_id: Option<String>,
    pub success: bool,
    #[schema(value_type = Object)]
    pub payload: Value,
    pub tenant_id: String,
    #[serde(serialize_with = "ts::serialize")]
    #[schema(value_type = String, format = DateTime)]
    pub occurred_at: DateTime<Utc>,
}

/// A stored event with its `data:` JSON rendered once, shared by every
/// session that receives it.
#[derive(Debug)]
pub struct StoredEvent {
    pub id: i64,
    pub tenant_id: String,
    pub name: String,
    pub correlation_id: Option<String>,
    pub data: ByteString,
}

impl StoredEvent {
    pub fn new(
        id: i64,
        tenant_id: String,
        name: String,
        correlation_id: Option<String>,
        success: bool,
        payload: Value,
        occurred_at: DateTime<Utc>,
    ) -> Self {
        let data = EventData {
            event: name.clone(),
            correlation_id: correlation_id.clone(),
            success,
            payload,
            tenant_id: tenant_id.clone(),
            occurred_at,
        };
        let data = serde_json::to_string(&data).unwrap_or_default();
        StoredEvent {
            id,
            tenant_id,
            name,
            correlation_id,
            data: ByteString::from(data),
        }
    }

    /// The `data:` JSON as a value (`GET /commands/:id` shows it as `result`).
    pub fn data_json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }
}
