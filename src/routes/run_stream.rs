//! `GET /runs/:runId/stream`: the runner stream, one WebSocket per run.
//!
//! Frames go to the run's actor in arrival order, as HTTP upserts do (the
//! same group commit with other runs' writes); each frame's answer waits in
//! an ordered queue, so acks leave in `seq` order, each after its commit. At
//! most `runs.stream_inflight` answers (and a bounded number of bytes) wait
//! per connection: beyond them the connection is not read, and TCP pushes
//! back on the runner.

use std::future::{ready, Future};
use std::pin::Pin;
use std::time::Duration;

use actix_web::{get, web, HttpRequest};
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, Session};
use actors::domain::{self as core, TenantId};
use actors::service::runs::Runs;
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use serde::Deserialize;
use tokio::time::Instant;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::dto::runs::{Run, RunStatus};
use crate::dto::stream::{parse_frame, InFrame, OutFrame};
use crate::http::auth::authenticate_request;
use crate::http::error::{ApiError, ApiResult, Code};
use crate::http::extract::{path_uuid, Query};
use crate::http::run_streams::{Answered, Registration, StreamStats};
use crate::http::state::{State, Svc};
use crate::http::tenant::TenantHeader;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct RunStreamQuery {
    /// Alternative to the `x-tenant-id` header (for clients that cannot set headers).
    pub tenant_id: Option<String>,
    /// Alternative to `Authorization: Bearer`. Redacted from logs.
    #[serde(rename = "access_token")]
    #[param(rename = "access_token")]
    pub access_token: Option<String>,
}

/// The runner stream of a RUNNING run (WebSocket, RFC 6455).
///
/// Text frames carry JSON. Runner → server: `{"type":"vars","seq":1,"vars":[…items as in
/// POST /runs/{runId}/vars…]}` and `{"type":"finish","seq":9,"status":"SUCCEEDED"}`; `seq`
/// is a positive integer that grows with every frame of the run, across reconnects.
/// Server → runner: `{"type":"ack","seq":1,"upserted":2}` once the frame's rows are
/// committed, in `seq` order (`"duplicate":true, "upserted":0` for a frame at or below the
/// run's committed `seq`, shown as `streamSeq` on the run: not written again);
/// `{"type":"error","seq":1,"code":"…","message":"…","details":…}` refuses one frame
/// (nothing of it is written) and the stream stays open; `{"type":"finished","seq":9,
/// "run":{…Run…}}`, then close 1000. Within one connection a frame's `seq` must be above
/// the previous accepted frame's unless it is at or below the run's `streamSeq` when the
/// stream opened (a resend). Close codes: 1000 finished (or the run finished elsewhere),
/// 1001 server shutdown (after the acks of what committed), 1003 a binary frame, 1007 a
/// text frame that is not UTF-8, 1008 replaced by a newer stream on the run or silent for
/// three ping intervals, 1009 a frame over `limits.vars_body_bytes`. The server pings every
/// `runs.stream_ping_secs`; an open stream marks the run active (`lastActivityAt`).
#[utoipa::path(tag = "runs", params(crate::dto::TenantHeader, ("runId" = uuid::Uuid, Path, description = "Run id"), RunStreamQuery),
    responses(
        (status = 101, description = "Switching Protocols: the WebSocket is open"),
    ))]
#[get("/runs/{runId}/stream")]
#[tracing::instrument(level = "debug", skip_all, fields(run = %path.as_str()))]
pub async fn run_stream(
    req: HttpRequest,
    body: web::Payload,
    path: web::Path<String>,
    query: Query<RunStreamQuery>,
    svc: Svc,
    state: State,
) -> ApiResult {
    // (Also reads `access_token` from the query when there is no header.)
    let caller = authenticate_request(&req)?;
    let tenant = TenantHeader::read(&req)?.resolve(&caller, query.tenant_id.as_deref())?;
    let run_id = path_uuid("runId", &path)?;
    let (response, session, msgs) = actix_ws::handle(&req, body).map_err(|e| {
        ApiError::new(
            Code::ValidationFailed,
            format!("expected a WebSocket upgrade (RFC 6455): {e}"),
        )
    })?;
    if !state.is_accepting() {
        return Err(ApiError::unavailable(anyhow::anyhow!("shutting down")));
    }
    let run = svc.runs.stream_target(&tenant, run_id).await?;
    let limit = state.settings.limits.vars_body_bytes;
    let msgs = msgs
        .max_frame_size(limit)
        .aggregate_continuations()
        .max_continuation_size(limit);
    let conn = Conn {
        run: run_id,
        tenant,
        runs: svc.runs.clone(),
        opened_seq: run.stream_seq,
        inflight_max: state.settings.runs.stream_inflight.max(1),
        inflight_bytes_max: (4 * limit).max(1 << 20),
        ping: Duration::from_secs(state.settings.runs.stream_ping_secs.max(1)),
    };
    actix_web::rt::spawn(async move {
        let streams = &state.run_streams;
        conn.drive(session, msgs, streams.register(run_id), &streams.stats)
            .await;
    });
    Ok(response)
}

/// One connection's settings and handles.
struct Conn {
    run: Uuid,
    tenant: TenantId,
    runs: Runs,
    /// The run's committed `seq` when the stream opened.
    opened_seq: i64,
    inflight_max: usize,
    inflight_bytes_max: usize,
    ping: Duration,
}

/// How a frame turned out, waiting in the ordered queue.
struct Outcome {
    frame: OutFrame,
    /// The frame's size, released from the connection's budget.
    bytes: usize,
    /// Committed (or committed before): the frame's `seq`.
    settled: Option<i64>,
    /// Refused after it was taken (the run's actor said no).
    refused_late: bool,
    /// The stream ends after this answer.
    end: Option<Ending>,
}

type Pending = Pin<Box<dyn Future<Output = Outcome>>>;

/// Why a stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Finished,
    ClientClosed,
    Replaced,
    Shutdown,
    Silent,
    Binary,
    TooLarge,
    NotUtf8,
    Protocol,
    /// The runner is gone or stopped reading: no close frame can reach it.
    Gone,
}

impl Ending {
    fn reason(self) -> Option<CloseReason> {
        let (code, text) = match self {
            Ending::Finished => (CloseCode::Normal, "run finished"),
            Ending::ClientClosed => (CloseCode::Normal, "closed by the runner"),
            Ending::Replaced => (CloseCode::Policy, "replaced by a newer stream on this run"),
            Ending::Shutdown => (CloseCode::Away, "server shutting down"),
            Ending::Silent => (CloseCode::Policy, "silent for three ping intervals"),
            Ending::Binary => (CloseCode::Unsupported, "binary frames are not accepted"),
            Ending::TooLarge => (CloseCode::Size, "frame larger than limits.vars_body_bytes"),
            Ending::NotUtf8 => (CloseCode::Invalid, "text frame is not UTF-8"),
            Ending::Protocol => (CloseCode::Protocol, "WebSocket protocol error"),
            Ending::Gone => return None,
        };
        Some(CloseReason {
            code,
            description: Some(text.to_string()),
        })
    }

    fn of(e: &actix_ws::ProtocolError) -> Ending {
        match e {
            actix_ws::ProtocolError::Overflow => Ending::TooLarge,
            actix_ws::ProtocolError::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
                Ending::NotUtf8
            }
            // The continuation limit of the aggregated stream.
            actix_ws::ProtocolError::Io(io) if io.to_string().contains("maximum continuation") => {
                Ending::TooLarge
            }
            actix_ws::ProtocolError::Io(_) => Ending::Gone,
            _ => Ending::Protocol,
        }
    }
}

/// The `seq` bookkeeping of one connection.
struct Edge {
    /// The highest `seq` taken on this connection.
    last_seq: i64,
    /// The highest `seq` of this connection known committed.
    last_ok: i64,
    /// A `finish` was taken: later frames are refused.
    finishing: bool,
}

fn refused(seq: Option<i64>, error: &ApiError, bytes: usize) -> Pending {
    Box::pin(ready(Outcome {
        frame: OutFrame::error(seq, error),
        bytes,
        settled: None,
        refused_late: false,
        end: None,
    }))
}

fn run_finished() -> ApiError {
    ApiError::new(Code::RunFinished, "the run is finished")
}

impl Conn {
    /// Serves the connection until it ends, then acks what committed and
    /// closes.
    async fn drive(
        self,
        mut session: Session,
        mut msgs: AggregatedMessageStream,
        mut reg: Registration<'_>,
        stats: &StreamStats,
    ) {
        self.touch();
        let mut pending: FuturesOrdered<Pending> = FuturesOrdered::new();
        let mut bytes = 0usize;
        let mut edge = Edge {
            last_seq: 0,
            last_ok: 0,
            finishing: false,
        };
        let mut ping = tokio::time::interval_at(Instant::now() + self.ping, self.ping);
        let mut heard = Instant::now();
        let mut ending = if *reg.shutdown.borrow() {
            Some(Ending::Shutdown)
        } else {
            None
        };
        while ending.is_none() {
            let can_read = pending.len() < self.inflight_max && bytes < self.inflight_bytes_max;
            tokio::select! {
                Some(out) = pending.next(), if !pending.is_empty() => {
                    bytes -= out.bytes;
                    edge.settle(&out, pending.is_empty());
                    stats.count(answered(&out.frame));
                    ending = self.send(&mut session, &out.frame).await.err().or(out.end);
                }
                _ = &mut reg.replaced => ending = Some(Ending::Replaced),
                _ = reg.shutdown.changed() => ending = Some(Ending::Shutdown),
                _ = ping.tick() => {
                    if heard.elapsed() >= self.ping * 3 {
                        ending = Some(Ending::Silent);
                    } else if self.within(session.ping(b"")).await.is_err() {
                        ending = Some(Ending::Gone);
                    } else {
                        self.touch();
                    }
                }
                msg = msgs.next(), if can_read => {
                    heard = Instant::now();
                    ending = match msg {
                        None => Some(Ending::Gone),
                        Some(Err(e)) => Some(Ending::of(&e)),
                        Some(Ok(AggregatedMessage::Text(text))) => {
                            bytes += text.len();
                            pending.push_back(self.take(&mut edge, &text));
                            None
                        }
                        Some(Ok(AggregatedMessage::Binary(_))) => Some(Ending::Binary),
                        Some(Ok(AggregatedMessage::Ping(b))) => self.within(session.pong(&b)).await.err(),
                        Some(Ok(AggregatedMessage::Pong(_))) => None,
                        Some(Ok(AggregatedMessage::Close(_))) => Some(Ending::ClientClosed),
                    };
                }
            }
        }
        self.finish(session, pending, ending.unwrap_or(Ending::Gone), stats)
            .await;
    }

    /// Acks what committed (unless the runner is gone), then closes.
    async fn finish(
        &self,
        mut session: Session,
        mut pending: FuturesOrdered<Pending>,
        ending: Ending,
        stats: &StreamStats,
    ) {
        let mut reachable = ending != Ending::Gone;
        while let Some(out) = pending.next().await {
            stats.count(answered(&out.frame));
            if reachable && self.send(&mut session, &out.frame).await.is_err() {
                reachable = false;
            }
        }
        if let (true, Some(reason)) = (reachable, ending.reason()) {
            let _ = session.close(Some(reason)).await;
        }
        tracing::debug!(run = %self.run, ?ending, "runner stream closed");
    }

    /// Sends one frame.
    async fn send(&self, session: &mut Session, frame: &OutFrame) -> Result<(), Ending> {
        self.within(session.text(frame.to_text())).await
    }

    /// A send to the runner; one that takes nothing for three ping intervals
    /// is treated as gone.
    async fn within<E>(&self, send: impl Future<Output = Result<(), E>>) -> Result<(), Ending> {
        match tokio::time::timeout(self.ping * 3, send).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Ending::Gone),
        }
    }

    /// Marks the run active (off the connection's path).
    fn touch(&self) {
        let (runs, run) = (self.runs.clone(), self.run);
        actix_web::rt::spawn(async move {
            if let Err(e) = runs.touch(run).await {
                tracing::debug!(%run, error = %e, "marking the streaming run active failed");
            }
        });
    }

    /// Takes one text frame: refused at once, or on its way to the run's actor.
    fn take(&self, edge: &mut Edge, text: &str) -> Pending {
        let bytes = text.len();
        let frame = match parse_frame(text) {
            Ok(f) => f,
            Err(r) => return refused(r.seq, &r.error, bytes),
        };
        let seq = frame.seq();
        if edge.finishing {
            return refused(Some(seq), &run_finished(), bytes);
        }
        let action = match frame {
            InFrame::Vars { vars, .. } => match vars.into_upserts() {
                Ok(items) => Action::Vars(items),
                Err(e) => return refused(Some(seq), &e, bytes),
            },
            InFrame::Finish { status, .. } => match status {
                RunStatus::Running => {
                    let e = ApiError::field("status", "must be SUCCEEDED, FAILED or CANCELLED");
                    return refused(Some(seq), &e, bytes);
                }
                status => Action::Finish(status.into()),
            },
        };
        if seq <= edge.last_seq && seq > self.opened_seq {
            let e = ApiError::field(
                "seq",
                format!(
                    "must be above the previous frame's seq {} (or at most the run's committed seq {} when this stream opened: a resend)",
                    edge.last_seq, self.opened_seq
                ),
            );
            return refused(Some(seq), &e, bytes);
        }
        edge.last_seq = edge.last_seq.max(seq);
        edge.finishing = matches!(action, Action::Finish(_));
        self.forward(seq, action, bytes)
    }

    fn forward(&self, seq: i64, action: Action, bytes: usize) -> Pending {
        let (runs, run, tenant) = (self.runs.clone(), self.run, self.tenant.clone());
        Box::pin(async move {
            let res = match action {
                Action::Vars(items) => {
                    runs.upsert(run, tenant, items, Some(seq))
                        .await
                        .map(|u| OutFrame::Ack {
                            seq,
                            upserted: u.upserted,
                            duplicate: u.duplicate,
                        })
                }
                Action::Finish(status) => {
                    runs.finish(run, tenant, status, Some(seq))
                        .await
                        .map(|r| OutFrame::Finished {
                            seq,
                            run: Box::new(Run::from(r)),
                        })
                }
            };
            match res {
                Ok(frame) => Outcome {
                    end: matches!(frame, OutFrame::Finished { .. }).then_some(Ending::Finished),
                    frame,
                    bytes,
                    settled: Some(seq),
                    refused_late: false,
                },
                Err(e) => {
                    let e = ApiError::from(e);
                    match e.code {
                        Code::Internal => {
                            tracing::error!(%run, seq, error = %e, "stream frame failed")
                        }
                        Code::Unavailable => {
                            tracing::warn!(%run, seq, error = %e, "stream frame failed")
                        }
                        _ => {}
                    }
                    Outcome {
                        end: (e.code == Code::RunFinished).then_some(Ending::Finished),
                        frame: OutFrame::error(Some(seq), &e),
                        bytes,
                        settled: None,
                        refused_late: true,
                    }
                }
            }
        })
    }
}

fn answered(frame: &OutFrame) -> Answered {
    match frame {
        OutFrame::Ack {
            duplicate: true, ..
        } => Answered::Duplicate,
        OutFrame::Ack { .. } | OutFrame::Finished { .. } => Answered::Acked,
        OutFrame::Error { .. } => Answered::Refused,
    }
}

enum Action {
    Vars(Vec<core::VarUpsert>),
    Finish(core::RunStatus),
}

impl Edge {
    /// A frame's answer left the queue. A refused frame commits nothing, so
    /// when nothing was taken after it, its `seq` may be sent again.
    fn settle(&mut self, out: &Outcome, nothing_after: bool) {
        if let Some(seq) = out.settled {
            self.last_ok = self.last_ok.max(seq);
        }
        if out.refused_late && nothing_after {
            self.last_seq = self.last_ok;
            self.finishing = false;
        }
    }
}
