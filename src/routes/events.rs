//! `GET /events/stream`: Server-Sent Events of the caller's tenant, optionally
//! of one correlation id, with `Last-Event-ID` replay.

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_web::{get, web, HttpRequest};
use actix_web_lab::sse;
use actors::domain::ts;
use actors::events::hub::{EventHub, Subscribe, Unsubscribe};
use actors::events::StoredEvent;
use actors::store::events as sql;
use deadpool_postgres::Pool;
use serde::Deserialize;
use tokio::sync::mpsc;
use utoipa::IntoParams;

use crate::auth::caller_from_query_or_header;
use crate::error::{ApiError, ErrorBody};
use crate::state::State;
use crate::tenant::TenantHeader;

const REPLAY_PAGE: i64 = 500;
/// Frames buffered between the session task and the HTTP response.
const OUT_BUFFER: usize = 16;

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
    /// Alternative to the `Last-Event-ID` header: replay the events after this id.
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

fn valid_correlation(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

fn frame(ev: &StoredEvent) -> sse::Event {
    sse::Data::new(ev.data.clone())
        .id(ev.id.to_string())
        .event(ev.name.clone())
        .into()
}

fn control(name: &'static str) -> sse::Event {
    let data = serde_json::json!({ "occurredAt": ts::format(&chrono::Utc::now()) }).to_string();
    sse::Data::new(data).event(name).into()
}

/// The event stream of a tenant.
#[utoipa::path(
    tag = "events",
    params(crate::openapi::TenantHeader, StreamQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Replay the matching events after this id, then continue live")),
    responses(
        (status = 200, description = "`text/event-stream`. Each event: `id: <sequence>`, `event: <name>`, \
`data: <EventData JSON>`. `ping` (every events.keepalive_secs) and `reset` (Last-Event-ID older than \
the retained history or newer than the newest event) carry no id and `{\"occurredAt\"}` as data.",
            content_type = "text/event-stream", body = String),
        (status = 400, description = "TENANT_REQUIRED, TENANT_MISMATCH, VALIDATION_FAILED", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED", body = ErrorBody),
    )
)]
#[get("/events/stream")]
pub async fn stream(
    req: HttpRequest,
    state: State,
    query: web::Query<StreamQuery>,
) -> Result<impl actix_web::Responder, ApiError> {
    let caller = caller_from_query_or_header(&req, query.access_token.as_deref())?;
    let tenant_header = TenantHeader::read(&req)?;
    let tenant = tenant_header.resolve(&caller, query.tenant_id.as_deref())?;
    let correlation = query.correlation_id.clone().filter(|c| !c.is_empty());
    if correlation
        .as_deref()
        .is_some_and(|c| !valid_correlation(c))
    {
        return Err(ApiError::field(
            "correlationId",
            "must be 1..128 characters of [A-Za-z0-9._:-]",
        ));
    }
    let last_event_id = parse_last_event_id(&req, &query)?;
    let sub = state
        .hub
        .send(Subscribe {
            tenant: tenant.to_string(),
            correlation: correlation.clone(),
        })
        .await?;
    let (out, rx) = mpsc::channel(OUT_BUFFER);
    let session = Session {
        pool: state.pool.clone(),
        hub: state.hub.clone(),
        tenant: tenant.to_string(),
        correlation,
        keepalive: Duration::from_secs(state.settings.events.keepalive_secs.max(1)),
    };
    actix_web::rt::spawn(session.run(sub, last_event_id, out));
    Ok(sse::Sse::from_infallible_receiver(rx).with_retry_duration(Duration::from_secs(2)))
}

/// Pumps one session: replay from the table, then the hub's live feed, pings.
struct Session {
    pool: Pool,
    hub: Addr<EventHub>,
    tenant: String,
    correlation: Option<String>,
    keepalive: Duration,
}

impl Session {
    async fn run(
        self,
        sub: actors::events::hub::Subscription,
        last: Option<i64>,
        out: mpsc::Sender<sse::Event>,
    ) {
        let id = sub.id;
        if let Err(e) = self.pump(sub, last, &out).await {
            tracing::debug!(session = id, reason = %e, "SSE session ended");
        }
        // Removed from the hub at once.
        self.hub.do_send(Unsubscribe(id));
    }

    async fn pump(
        &self,
        sub: actors::events::hub::Subscription,
        last: Option<i64>,
        out: &mpsc::Sender<sse::Event>,
    ) -> anyhow::Result<()> {
        let mut live = sub.rx;
        // Live events start after the hub's position, or after what the client
        // has seen when this hub lags behind the table.
        let mut floor = sub.cursor;
        if let Some(after) = last {
            if self.replay(after, sub.cursor, out).await? {
                floor = floor.max(after);
            }
        }
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + self.keepalive, self.keepalive);
        loop {
            tokio::select! {
                ev = live.recv() => match ev {
                    // Events up to the cursor came from the replay.
                    Some(ev) if ev.id > floor => out.send(frame(&ev)).await?,
                    Some(_) => {}
                    None => anyhow::bail!("the hub dropped the session (it fell behind, or shutdown)"),
                },
                _ = ping.tick() => out.send(control("ping")).await?,
                _ = out.closed() => anyhow::bail!("the client went away"),
            }
        }
    }

    /// The stored events in `(after, cursor]` that match, or `reset` when
    /// `after` is outside the retained history (older than the oldest event
    /// kept, or newer than the newest). False when it sent `reset`.
    async fn replay(
        &self,
        after: i64,
        cursor: i64,
        out: &mpsc::Sender<sse::Event>,
    ) -> anyhow::Result<bool> {
        let client = self.pool.get().await?;
        let outside = match sql::bounds(&client).await? {
            (Some(min), Some(max)) => after < min - 1 || after > max,
            // Nothing retained: any id the client saw is gone.
            _ => after > 0,
        };
        if outside {
            out.send(control("reset")).await?;
            return Ok(false);
        }
        let mut from = after;
        loop {
            let page = sql::replay(
                &client,
                &self.tenant,
                self.correlation.as_deref(),
                from,
                cursor,
                REPLAY_PAGE,
            )
            .await?;
            let n = page.len() as i64;
            for ev in page {
                from = ev.id;
                out.send(frame(&Arc::new(ev))).await?;
            }
            if n < REPLAY_PAGE {
                return Ok(true);
            }
        }
    }
}
