//! `GET /events/stream`: Server-Sent Events of the caller's tenant, optionally
//! of one correlation id, with `Last-Event-ID` replay.

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_web::{get, HttpRequest};
use actix_web_lab::sse;
use actors::domain::ts;
use actors::events::hub::{EventHub, Subscribe, Unsubscribe};
use actors::events::StoredEvent;
use actors::store::events as sql;
use deadpool_postgres::Pool;
use serde::Deserialize;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use utoipa::IntoParams;

use crate::auth::authenticate_request;
use crate::error::{ApiError, ErrorBody};
use crate::extract::Query;
use crate::state::State;
use crate::tenant::TenantHeader;

/// Rows of one replay page at most.
const REPLAY_PAGE: i64 = 200;
/// Payload bytes of one replay page at most (past its first event).
const REPLAY_PAGE_BYTES: i64 = 256 * 1024;
/// Frames buffered between the session task and the HTTP response...
const OUT_FRAMES: usize = 64;
/// ...and their bytes at most (a larger event passes alone).
const OUT_BYTES: usize = 256 * 1024;

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

fn frame(ev: &StoredEvent) -> (sse::Event, u32) {
    let size = frame_size(&ev.data);
    let frame = sse::Data::new(ev.data.clone())
        .id(ev.id.to_string())
        .event(ev.name.clone())
        .into();
    (frame, size)
}

fn control(name: &'static str) -> (sse::Event, u32) {
    let data = serde_json::json!({ "occurredAt": ts::format(&chrono::Utc::now()) }).to_string();
    let size = frame_size(&data);
    (sse::Data::new(data).event(name).into(), size)
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
    query: Query<StreamQuery>,
) -> Result<impl actix_web::Responder, ApiError> {
    // (Also reads `access_token` from the query when there is no header.)
    let caller = authenticate_request(&req)?;
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
    let (tx, mut rx) = mpsc::channel::<(sse::Event, OwnedSemaphorePermit)>(OUT_FRAMES);
    let out = Out {
        tx,
        bytes: Arc::new(Semaphore::new(OUT_BYTES)),
    };
    let session = Session {
        pool: state.pool.clone(),
        replays: state.replays.clone(),
        hub: state.hub.clone(),
        tenant: tenant.to_string(),
        correlation,
        keepalive: Duration::from_secs(state.settings.events.keepalive_secs.max(1)),
        slow_reader: Duration::from_millis(state.settings.events.slow_reader_ms.max(1)),
    };
    actix_web::rt::spawn(session.run(sub, last_event_id, out));
    // A frame's bytes are released when the response takes it.
    let frames = futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|next| next.map(|(frame, _bytes)| frame))
    });
    Ok(sse::Sse::from_infallible_stream(frames).with_retry_duration(Duration::from_secs(2)))
}

/// The session's side of the response: frames, bounded in count and bytes.
struct Out {
    tx: mpsc::Sender<(sse::Event, OwnedSemaphorePermit)>,
    bytes: Arc<Semaphore>,
}

fn frame_size(data: &str) -> u32 {
    // A frame larger than the whole budget takes all of it.
    data.len().clamp(1, OUT_BYTES) as u32
}

/// Pumps one session: replay from the table, then the hub's live feed, pings.
struct Session {
    pool: Pool,
    /// Bounds how many replay pages are read at once, process-wide, so that
    /// replays never take the connections that writes need.
    replays: Arc<Semaphore>,
    hub: Addr<EventHub>,
    tenant: String,
    correlation: Option<String>,
    keepalive: Duration,
    /// A frame the client has not taken within this is a reader that stopped
    /// reading: the session ends.
    slow_reader: Duration,
}

impl Session {
    async fn run(self, sub: actors::events::hub::Subscription, last: Option<i64>, out: Out) {
        let id = sub.id;
        if let Err(e) = self.pump(sub, last, &out).await {
            tracing::debug!(session = id, reason = %e, "SSE session ended");
        }
        // Removed from the hub at once.
        self.hub.do_send(Unsubscribe(id));
    }

    /// Hands one frame to the response, or ends the session when the client
    /// has not made room for it within `slow_reader`.
    async fn send(&self, out: &Out, (frame, size): (sse::Event, u32)) -> anyhow::Result<()> {
        let handed = async {
            let bytes = out.bytes.clone().acquire_many_owned(size).await?;
            out.tx
                .send((frame, bytes))
                .await
                .map_err(|_| anyhow::anyhow!("the client went away"))
        };
        match tokio::time::timeout(self.slow_reader, handed).await {
            Ok(res) => res,
            Err(_) => anyhow::bail!("the client stopped reading"),
        }
    }

    async fn pump(
        &self,
        sub: actors::events::hub::Subscription,
        last: Option<i64>,
        out: &Out,
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
                    Some(ev) if ev.id > floor => self.send(out, frame(&ev)).await?,
                    Some(_) => {}
                    None => anyhow::bail!("the hub dropped the session (it fell behind, or shutdown)"),
                },
                _ = ping.tick() => self.send(out, control("ping")).await?,
                _ = out.tx.closed() => anyhow::bail!("the client went away"),
            }
        }
    }

    /// One page of the replay, read on a connection that is released before
    /// anything is sent.
    async fn page(&self, from: i64, cursor: i64, limit: i64) -> anyhow::Result<Vec<StoredEvent>> {
        let _slot = self.replays.acquire().await?;
        let client = self.pool.get().await?;
        Ok(sql::replay(
            &client,
            &self.tenant,
            self.correlation.as_deref(),
            from,
            cursor,
            limit,
            REPLAY_PAGE_BYTES,
        )
        .await?)
    }

    /// The stored events in `(after, cursor]` that match, or `reset` when
    /// `after` is outside the retained history (older than the oldest event
    /// kept, or newer than the newest). False when it sent `reset`.
    ///
    /// No connection is held while a frame waits for the client, and a
    /// session holds at most one page (bounded in rows and bytes) at a time.
    async fn replay(&self, after: i64, cursor: i64, out: &Out) -> anyhow::Result<bool> {
        let bounds = {
            let _slot = self.replays.acquire().await?;
            let client = self.pool.get().await?;
            sql::bounds(&client).await?
        };
        let outside = match bounds {
            (Some(min), Some(max)) => after < min - 1 || after > max,
            // Nothing retained: any id the client saw is gone.
            _ => after > 0,
        };
        if outside {
            self.send(out, control("reset")).await?;
            return Ok(false);
        }
        let mut from = after;
        // Rows asked for: grows while whole pages fit the byte budget, shrinks
        // to what fitted when it cut a page, so large events are not read
        // (and rendered) only to be left out.
        let mut limit = 16;
        loop {
            let page = self.page(from, cursor, limit).await?;
            let Some(last) = page.last() else {
                return Ok(true);
            };
            from = last.id;
            let rows = page.len() as i64;
            limit = if rows == limit {
                (limit * 2).min(REPLAY_PAGE)
            } else {
                (rows + 1).min(REPLAY_PAGE)
            };
            for ev in page {
                self.send(out, frame(&ev)).await?;
            }
            if from >= cursor {
                return Ok(true);
            }
        }
    }
}
