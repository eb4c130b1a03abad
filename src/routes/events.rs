//! `GET /events/stream`: Server-Sent Events of the caller's tenant, optionally
//! of one correlation id, with `Last-Event-ID` replay. The session (replay,
//! live feed, pings, slow readers) is the core's; this route resolves the
//! request and frames events.

use actix_web::{get, HttpRequest};
use actix_web_lab::sse;
use actors::domain::CorrelationId;
use actors::sse::Filter;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::dto::events::SseFrames;
use crate::http::auth::authenticate_request;
use crate::http::error::ApiError;
use crate::http::extract::Query;
use crate::http::state::Svc;
use crate::http::tenant::TenantHeader;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Alternative to the `x-tenant-id` header (EventSource cannot send headers).
    pub tenant_id: Option<String>,
    /// Only events of this correlation id (a command's, or a run id).
    pub correlation_id: Option<String>,
    /// Alternative to `Authorization: Bearer` for EventSource. Redacted from logs.
    #[serde(rename = "access_token")]
    #[param(rename = "access_token")]
    pub access_token: Option<String>,
    /// Replay the events after this id, then continue live. The
    /// `Last-Event-ID` header (what EventSource sends on reconnect) says the
    /// same and wins when both are present.
    pub last_event_id: Option<String>,
}

fn parse_last_event_id(req: &HttpRequest, query: &StreamQuery) -> Result<Option<i64>, ApiError> {
    let raw = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| query.last_event_id.clone());
    match raw.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|v| *v >= 0)
            .map(Some)
            .ok_or_else(|| {
                ApiError::field(
                    "Last-Event-ID",
                    "must be a non-negative integer (an event id)",
                )
            }),
    }
}

/// The event stream of a tenant.
#[utoipa::path(tag = "events", params(crate::dto::TenantHeader, StreamQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Replay the matching events after this id, then continue live")),
    responses(
        (status = 200, description = "`text/event-stream`. Each event: `id: <sequence>`, `event: <name>`, \
`data: <EventData JSON>`. `ping` (every events.keepalive_secs) and `reset` (Last-Event-ID older than \
the retained history or newer than the newest event) carry no id and `{\"occurredAt\"}` as data.",
            content_type = "text/event-stream", body = String),
    ))]
#[get("/events/stream")]
#[tracing::instrument(level = "debug", skip_all)]
pub async fn stream(
    req: HttpRequest,
    svc: Svc,
    query: Query<StreamQuery>,
) -> Result<impl actix_web::Responder, ApiError> {
    // (Also reads `access_token` from the query when there is no header.)
    let caller = authenticate_request(&req)?;
    let tenant = TenantHeader::read(&req)?.resolve(&caller, query.tenant_id.as_deref())?;
    let correlation = query
        .correlation_id
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(CorrelationId::parse)
        .transpose()
        .map_err(|m| ApiError::field("correlationId", m))?;
    let filter = Filter {
        tenant,
        correlation,
        last_event_id: parse_last_event_id(&req, &query)?,
    };
    let frames = svc.events.stream(filter, SseFrames).await?;
    // No `retry:` block: actix-web-lab sends it as a block of its own, which
    // some clients (httpx-sse) surface as an empty message; clients keep
    // their default reconnection delay.
    Ok(sse::Sse::from_infallible_stream(frames))
}
