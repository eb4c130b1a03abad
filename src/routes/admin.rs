//! Operations for admins: the live actors, and Prometheus metrics.

use std::collections::BTreeMap;

use actix_web::{get, HttpResponse};

use crate::dto::admin::{ActorInfo, ActorsQuery, ActorsView, SseSummary};
use crate::http::auth::Caller;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::Query;
use crate::http::state::State;

const KINDS: [&str; 4] = ["script", "run", "outbox", "eventhub"];

/// The live actors of this process (admin only).
#[utoipa::path(tag = "operations", params(ActorsQuery),
    responses(
        (status = 200, description = "Actors of this process", body = ActorsView),
    ))]
#[get("/admin/actors")]
pub async fn list_actors(caller: Caller, state: State, query: Query<ActorsQuery>) -> ApiResult {
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
    let mut kinds = BTreeMap::new();
    let mut list: Vec<ActorInfo> = Vec::new();
    for (kind, counts, live) in state.services.actors() {
        kinds.insert(kind.to_string(), counts.into());
        if query.kind.as_deref().is_none_or(|q| q == kind) {
            list.extend(live.into_iter().map(ActorInfo::from));
        }
    }
    list.sort_by_key(|a| std::cmp::Reverse(a.last_activity_at));
    list.truncate(limit as usize);
    let by_tenant: BTreeMap<String, usize> = state
        .services
        .events
        .session_counts()
        .await?
        .into_iter()
        .collect();
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
#[utoipa::path(tag = "operations", responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain; version=0.0.4", body = String),
    ))]
#[get("/metrics")]
pub async fn metrics(caller: Caller, state: State) -> ApiResult {
    caller.require_admin()?;
    let text = state
        .metrics
        .render(&state.services, &state.run_streams)
        .await;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text))
}
