//! Events: what a write appends, and what the stream delivers.

use std::sync::OnceLock;

use bytestring::ByteString;
use chrono::{DateTime, Utc};
use serde_json::Value;

/// An event to append (in the transaction of the write it describes, or
/// through the appender).
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub tenant_id: String,
    pub name: String,
    pub correlation_id: Option<String>,
    pub success: bool,
    pub payload: Value,
}

/// A stored event: its position in the stream, when it happened and what.
/// Shared (`Arc`) by every session that receives it, so its rendering for
/// the wire is made once, by whoever frames it first.
#[derive(Debug)]
pub struct Event {
    pub id: i64,
    pub occurred_at: DateTime<Utc>,
    pub body: NewEvent,
    rendered: OnceLock<ByteString>,
}

impl Event {
    pub fn new(id: i64, occurred_at: DateTime<Utc>, body: NewEvent) -> Self {
        Event {
            id,
            occurred_at,
            body,
            rendered: OnceLock::new(),
        }
    }

    /// The event as `render` makes it, made once per event.
    pub fn rendered(&self, render: impl FnOnce(&Event) -> String) -> ByteString {
        self.rendered
            .get_or_init(|| ByteString::from(render(self)))
            .clone()
    }
}
