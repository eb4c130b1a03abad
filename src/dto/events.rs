//! Events on the wire: the `data:` JSON of an SSE event, and how a session's
//! frames are made.

use actix_web_lab::sse;
use actors::domain::{Event, NewEvent};
use actors::sse::{Control, Framer};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::dto::ts;

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

impl EventData {
    pub fn new(e: &NewEvent, occurred_at: DateTime<Utc>) -> Self {
        EventData {
            event: e.name.clone(),
            correlation_id: e.correlation_id.clone(),
            success: e.success,
            payload: e.payload.clone(),
            tenant_id: e.tenant_id.clone(),
            occurred_at,
        }
    }
}

/// Frames of `text/event-stream`: `id`, `event` and the `EventData` JSON
/// (rendered once per event, shared by every session); `ping` and `reset`
/// carry `{"occurredAt"}` and no id.
pub struct SseFrames;

impl Framer for SseFrames {
    type Frame = sse::Event;

    fn event(&self, ev: &Event) -> (sse::Event, usize) {
        let data = ev.rendered(|ev| {
            serde_json::to_string(&EventData::new(&ev.body, ev.occurred_at)).unwrap_or_default()
        });
        let size = data.len();
        let frame = sse::Data::new(data)
            .id(ev.id.to_string())
            .event(ev.body.name.clone())
            .into();
        (frame, size)
    }

    fn control(&self, c: Control) -> (sse::Event, usize) {
        let name = match c {
            Control::Ping => "ping",
            Control::Reset => "reset",
        };
        let data = serde_json::json!({ "occurredAt": ts::format(&Utc::now()) }).to_string();
        let size = data.len();
        (sse::Data::new(data).event(name).into(), size)
    }
}
