//! Operations for admins: the live actors, and Prometheus metrics.

use std::collections::{BTreeMap, HashMap};

use actix_web::{get, HttpResponse};
use actors::registry::{ActorInfo, KindCounts};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::Query;
use crate::state::State;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ActorsQuery {
    /// Only this kind: script, run, outbox or eventhub.
    pub kind: Option<String>,
    /// Live actors listed at most (1..1000, default 100).
    pub limit: Option<u32>,
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

const KINDS: [&str; 4] = ["script", "run", "outbox", "eventhub"];

fn singleton(live: bool) -> KindCounts {
    KindCounts {
        live: live as u64,
        started: live as u64,
        restarted: 0,
        passivated: 0,
    }
}

/// The live actors of this process (admin only).
#[utoipa::path(
    tag = "operations",
    params(ActorsQuery),
    responses(
        (status = 200, description = "Actors of this process", body = ActorsView),
        (status = 400, description = "VALIDATION_FAILED (kind, limit)", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: not an admin", body = ErrorBody),
    )
)]
#[get("/admin/actors")]
pub async fn list_actors(
    caller: Caller,
    state: State,
    query: Query<ActorsQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    if let Some(k) = query.kind.as_deref().filter(|k| !KINDS.contains(k)) {
        return Err(ApiError::field(
            "kind",
            format!("must be one of {} (got {k})", KINDS.join(", ")),
        ));
    }
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::field("limit", "must be 1..1000"));
    }
    let wanted = |k: &str| query.kind.as_deref().is_none_or(|q| q == k);
    let mut kinds = BTreeMap::new();
    kinds.insert("script".to_string(), state.scripts.registry().counts());
    kinds.insert("run".to_string(), state.runs.registry().counts());
    kinds.insert("outbox".to_string(), singleton(state.outbox_meta.is_some()));
    kinds.insert("eventhub".to_string(), singleton(true));
    let mut list: Vec<ActorInfo> = Vec::new();
    if wanted("script") {
        list.extend(state.scripts.registry().actors());
    }
    if wanted("run") {
        list.extend(state.runs.registry().actors());
    }
    let single = |kind: &str, meta: &actors::registry::ActorMeta| ActorInfo {
        kind: kind.to_string(),
        key: kind.to_string(),
        tenant_id: None,
        mailbox: meta.mailbox(),
        last_activity_at: meta.last_activity(),
        restarts: meta.restarts(),
    };
    if wanted("outbox") {
        if let Some(m) = &state.outbox_meta {
            list.push(single("outbox", m));
        }
    }
    if wanted("eventhub") {
        list.push(single("eventhub", &state.hub_meta));
    }
    list.sort_by_key(|a| std::cmp::Reverse(a.last_activity_at));
    list.truncate(limit as usize);
    let by_tenant: HashMap<String, usize> =
        state.hub.send(actors::events::hub::SessionCounts).await?;
    let by_tenant: BTreeMap<String, usize> = by_tenant.into_iter().collect();
    Ok(HttpResponse::Ok().json(ActorsView {
        kinds,
        actors: list,
        sse: SseSummary {
            sessions: by_tenant.values().sum(),
            by_tenant,
        },
    }))
}

/// Prometheus metrics (admin only: the admin token in dev mode, the admin role in jwt mode).
#[utoipa::path(
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain; version=0.0.4", body = String),
        (status = 401, description = "UNAUTHORIZED", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: not an admin", body = ErrorBody),
    )
)]
#[get("/metrics")]
pub async fn metrics(caller: Caller, state: State) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let text = state.metrics.render(&state).await;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text))
}
