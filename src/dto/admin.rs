//! The admin view on the wire.

use std::collections::BTreeMap;

use actors::keyed;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::dto::{ts, view};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ActorsQuery {
    /// Only this kind: script, run, outbox or eventhub.
    pub kind: Option<String>,
    /// Live actors listed at most (1..1000, default 100).
    pub limit: Option<u32>,
}

view! {
    /// Life-cycle counts of one kind of actor in this process.
    KindCounts from keyed::KindCounts {
        live: u64,
        started: u64,
        restarted: u64,
        passivated: u64,
    }
}

view! {
    /// One live actor.
    ActorInfo from keyed::ActorInfo {
        kind: String,
        key: String,
        tenant_id: Option<String>,
        mailbox: i64,
        #[serde(serialize_with = "ts::serialize")]
        #[schema(value_type = String, format = DateTime)]
        last_activity_at: DateTime<Utc>,
        restarts: u32,
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SseSummary {
    pub sessions: usize,
    pub by_tenant: BTreeMap<String, usize>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"kinds": {"script": {"live": 1, "started": 3, "restarted": 0, "passivated": 2},
    "run": {"live": 0, "started": 0, "restarted": 0, "passivated": 0},
    "outbox": {"live": 1, "started": 1, "restarted": 0, "passivated": 0},
    "eventhub": {"live": 1, "started": 1, "restarted": 0, "passivated": 0}},
    "actors": [{"kind": "script", "key": "0193a0a0-0000-7000-8000-000000000001", "tenantId": "acme", "mailbox": 0,
        "lastActivityAt": "2026-11-30T05:21:00.123Z", "restarts": 0}],
    "sse": {"sessions": 2, "byTenant": {"acme": 2}}}))]
pub struct ActorsView {
    pub kinds: BTreeMap<String, KindCounts>,
    pub actors: Vec<ActorInfo>,
    pub sse: SseSummary,
}
