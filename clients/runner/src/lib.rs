//! A runner client for scriptd's runner stream, `GET /runs/:runId/stream`.
//!
//! A [`Runner`] owns one WebSocket to one run. It numbers every frame with
//! the run's next `seq` (continuing after the run's committed `streamSeq`,
//! so a restarted runner process carries on), keeps each frame until the
//! server answers it, and, when the connection breaks, reconnects with
//! exponential backoff and resends every unanswered frame with the same
//! `seq` (the server answers resends of committed frames as duplicates).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use scriptd_runner::{Runner, RunnerConfig};
//! use serde_json::json;
//!
//! let cfg = RunnerConfig::new("http://127.0.0.1:8080", "t1", "alice", "0193a0a0-0000-7000-8000-000000000001");
//! let mut runner = Runner::start(cfg).await?;
//! runner.send_vars(vec![json!({"key": "customer.name", "strVal": "Ana"})]).await?;
//! let run = runner.finish("SUCCEEDED").await?;
//! println!("{} {:?}", run["status"], runner.report());
//! # Ok(())
//! # }
//! ```
//!
//! The runner reads the connection only inside its methods (while it waits
//! for room in the window, for acks, or opportunistically after each write);
//! the server's pings are answered then. A runner left idle for longer than
//! three of the server's ping intervals is closed by the server (1008) and
//! reconnects on its next call.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures::{FutureExt, SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// At most this many items in one `vars` frame (as `POST /runs/:runId/vars`).
pub const MAX_ITEMS: usize = 500;
/// The statuses a `finish` frame may carry.
pub const FINISH_STATUSES: [&str; 3] = ["SUCCEEDED", "FAILED", "CANCELLED"];

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Nothing heard for this long while waiting for the server (which pings
/// every 20 s by default): the connection is taken as dead.
const IDLE: Duration = Duration::from_secs(65);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where and as whom to stream.
#[derive(Clone)]
pub struct RunnerConfig {
    /// The server's HTTP base, e.g. `http://127.0.0.1:8080`.
    pub base_url: String,
    pub tenant: String,
    /// The bearer token.
    pub token: String,
    pub run_id: String,
    /// At most this many frames sent and not yet answered (default 256).
    pub inflight: usize,
    /// Give up after this many failed connection attempts (or retry
    /// rounds of `UNAVAILABLE` refusals) in a row (default 10).
    pub max_reconnects: u32,
}

impl RunnerConfig {
    pub fn new(
        base_url: impl Into<String>,
        tenant: impl Into<String>,
        token: impl Into<String>,
        run_id: impl Into<String>,
    ) -> Self {
        RunnerConfig {
            base_url: base_url.into(),
            tenant: tenant.into(),
            token: token.into(),
            run_id: run_id.into(),
            inflight: 256,
            max_reconnects: 10,
        }
    }
}

impl fmt::Debug for RunnerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunnerConfig")
            .field("base_url", &self.base_url)
            .field("tenant", &self.tenant)
            .field("token", &"<redacted>")
            .field("run_id", &self.run_id)
            .field("inflight", &self.inflight)
            .field("max_reconnects", &self.max_reconnects)
            .finish()
    }
}

/// What happened to the frames so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// `vars` frames acknowledged as committed, each once (duplicates included).
    pub acked: u64,
    /// Of those, the ones acknowledged as a resend of a frame committed before.
    pub duplicates: u64,
    /// Frames the server refused (nothing of them written): seq, code, message.
    pub refused: Vec<(i64, String, String)>,
    /// Successful reconnections.
    pub reconnects: u32,
    /// The highest seq assigned (the run's `streamSeq` at start before any).
    pub last_seq: i64,
}

impl Report {
    /// The report as JSON, refusals as `{seq, code, message}` objects.
    pub fn to_json(&self) -> Value {
        let refused: Vec<Value> = self
            .refused
            .iter()
            .map(|(seq, code, message)| json!({"seq": seq, "code": code, "message": message}))
            .collect();
        json!({
            "acked": self.acked,
            "duplicates": self.duplicates,
            "refused": refused,
            "reconnects": self.reconnects,
            "lastSeq": self.last_seq,
        })
    }
}

/// The run is finished (a 409 `RUN_FINISHED` when (re)connecting, or the
/// stream closed with 1000 before this runner's `finish`): nothing more can
/// be streamed. Find it with `err.downcast_ref::<RunFinished>()`.
#[derive(Debug)]
pub struct RunFinished(pub String);

impl fmt::Display for RunFinished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the run is finished: {}", self.0)
    }
}

impl std::error::Error for RunFinished {}

/// A frame kept until the server answers it.
struct Frame {
    text: Utf8Bytes,
    /// Refused as `UNAVAILABLE`: the message, while it waits for a resend.
    unavailable: Option<String>,
}

/// Why a connection attempt failed.
enum ConnectError {
    /// Worth another attempt (the server is down, restarting, overloaded).
    Retry(anyhow::Error),
    /// Not: bad token, unknown run, finished run, bad URL.
    Fatal(anyhow::Error),
}

/// One runner stream.
pub struct Runner {
    cfg: RunnerConfig,
    run_id: Uuid,
    base_url: String,
    ws_url: String,
    auth: HeaderValue,
    tenant: HeaderValue,
    http: reqwest::Client,
    ws: Option<Ws>,
    next_seq: i64,
    /// Every frame not answered yet, by seq.
    unacked: BTreeMap<i64, Frame>,
    /// The seqs written on the current connection and not answered yet, in
    /// the order written (the server answers in that order; always
    /// ascending).
    wire: VecDeque<i64>,
    /// Failed connection attempts (and `UNAVAILABLE` rounds) since the last
    /// answer that made progress.
    failures: u32,
    /// A frame was refused as `UNAVAILABLE`: send nothing new, let the
    /// connection drain, then reconnect and resend.
    retry: bool,
    last_error: Option<String>,
    /// The run, from the `finished` answer to this runner's `finish`.
    finished: Option<Value>,
    report: Report,
}

impl Runner {
    /// Reads the run (`GET /runs/:runId`) to continue after its committed
    /// `streamSeq`, then opens the stream.
    pub async fn start(cfg: RunnerConfig) -> Result<Runner> {
        let mut runner = Runner::unconnected(cfg)?;
        let run = runner.get_run().await?;
        let status = run["status"].as_str().unwrap_or_default();
        if status != "RUNNING" {
            return Err(RunFinished(format!("run {} is {status}", runner.run_id)).into());
        }
        let stream_seq = run["streamSeq"]
            .as_i64()
            .context("the run has no streamSeq (is the server older than the runner stream?)")?;
        runner.next_seq = stream_seq + 1;
        runner.report.last_seq = stream_seq;
        match runner.connect().await {
            Ok(ws) => runner.ws = Some(ws),
            Err(ConnectError::Retry(e) | ConnectError::Fatal(e)) => {
                return Err(e.context("opening the runner stream"))
            }
        }
        Ok(runner)
    }

    /// A runner with its settings checked, not connected.
    fn unconnected(cfg: RunnerConfig) -> Result<Runner> {
        let run_id = Uuid::parse_str(cfg.run_id.trim())
            .with_context(|| format!("run id {:?} is not a UUID", cfg.run_id))?;
        if cfg.inflight == 0 {
            bail!("inflight must be at least 1");
        }
        let base_url = cfg.base_url.trim_end_matches('/').to_string();
        let ws_url = ws_url(&base_url, &run_id.to_string())?;
        let auth = HeaderValue::from_str(&format!("Bearer {}", cfg.token))
            .context("the token cannot go in an HTTP header")?;
        let tenant =
            HeaderValue::from_str(&cfg.tenant).context("the tenant cannot go in an HTTP header")?;
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        Ok(Runner {
            cfg,
            run_id,
            base_url,
            ws_url,
            auth,
            tenant,
            http,
            ws: None,
            next_seq: 1,
            unacked: BTreeMap::new(),
            wire: VecDeque::new(),
            failures: 0,
            retry: false,
            last_error: None,
            finished: None,
            report: Report::default(),
        })
    }

    /// Sends one `vars` frame (1..500 items as in `POST /runs/:runId/vars`)
    /// and returns its seq. Waits for acks first when `inflight` frames are
    /// unanswered. The frame is kept (and resent after a reconnect) until
    /// the server acks or refuses it.
    pub async fn send_vars(&mut self, items: Vec<Value>) -> Result<i64> {
        check_items(&items)?;
        self.ensure_open()?;
        while self.unacked.len() >= self.cfg.inflight || self.retry {
            self.step().await?;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.report.last_seq = seq;
        self.keep(seq, vars_frame(seq, &items));
        self.write(seq).await?;
        Ok(seq)
    }

    /// Waits until every frame sent is answered: acked, or refused (see
    /// [`Report::refused`]).
    pub async fn flush(&mut self) -> Result<()> {
        self.ensure_open()?;
        while !self.unacked.is_empty() {
            self.step().await?;
        }
        Ok(())
    }

    /// Flushes, sends `finish` with `status` (SUCCEEDED, FAILED or
    /// CANCELLED), waits for `finished` and returns the finished run.
    pub async fn finish(&mut self, status: &str) -> Result<Value> {
        if !FINISH_STATUSES.contains(&status) {
            bail!("status must be one of {FINISH_STATUSES:?}, not {status:?}");
        }
        self.flush().await?;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.report.last_seq = seq;
        self.keep(seq, finish_frame(seq, status));
        match self.await_finished(seq).await {
            Ok(run) => {
                self.shutdown_ws().await;
                Ok(run)
            }
            Err(e) if e.is::<RunFinished>() => {
                // The connection may have broken after the finish committed
                // and before its answer: then the run shows this frame's seq.
                let mut run = self.get_run().await?;
                let committed = run["streamSeq"].as_i64().unwrap_or(0) >= seq;
                if committed && run["status"] == status {
                    self.unacked.remove(&seq);
                    if let Some(obj) = run.as_object_mut() {
                        obj.remove("vars");
                    }
                    self.finished = Some(run.clone());
                    Ok(run)
                } else {
                    Err(e)
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Flushes and closes the stream, leaving the run RUNNING.
    pub async fn close(&mut self) -> Result<()> {
        self.flush().await?;
        self.shutdown_ws().await;
        Ok(())
    }

    pub fn report(&self) -> &Report {
        &self.report
    }

    pub fn run_id(&self) -> Uuid {
        self.run_id
    }

    /// The seq the next frame gets.
    pub fn next_seq(&self) -> i64 {
        self.next_seq
    }

    /// Frames sent and not answered yet.
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    /// `GET /runs/:runId`: the run with its variables.
    pub async fn get_run(&self) -> Result<Value> {
        let url = format!("{}/runs/{}", self.base_url, self.run_id);
        let res = self
            .http
            .get(&url)
            .header("authorization", self.auth.as_bytes())
            .header("x-tenant-id", self.tenant.as_bytes())
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = res.status();
        let body = res.text().await.with_context(|| format!("GET {url}"))?;
        if !status.is_success() {
            bail!("GET {url}: {status}: {}", error_message(&body));
        }
        serde_json::from_str(&body).with_context(|| format!("GET {url}: the answer is not JSON"))
    }

    async fn await_finished(&mut self, seq: i64) -> Result<Value> {
        self.write(seq).await?;
        while self.finished.is_none() && self.unacked.contains_key(&seq) {
            self.step().await?;
        }
        if let Some(run) = &self.finished {
            return Ok(run.clone());
        }
        match self.report.refused.iter().rev().find(|r| r.0 == seq) {
            Some((_, code, message)) => bail!("the finish frame was refused: {code}: {message}"),
            None => bail!("the finish frame got no answer"),
        }
    }

    fn ensure_open(&self) -> Result<()> {
        if self.finished.is_some() {
            bail!("this runner finished the run already");
        }
        Ok(())
    }

    fn keep(&mut self, seq: i64, text: String) {
        let frame = Frame {
            text: text.into(),
            unavailable: None,
        };
        self.unacked.insert(seq, frame);
    }

    /// Writes a kept frame, reconnecting (which resends it) when there is
    /// no connection or the write fails; then handles what already arrived.
    async fn write(&mut self, seq: i64) -> Result<()> {
        let Some(ws) = self.ws.as_mut() else {
            return self.reconnect().await;
        };
        let Some(frame) = self.unacked.get(&seq) else {
            return Ok(());
        };
        match ws.send(Message::Text(frame.text.clone())).await {
            Ok(()) => self.wire.push_back(seq),
            Err(e) => {
                self.lost_connection(format!("writing: {e}"));
                return self.reconnect().await;
            }
        }
        self.poll_ready()
    }

    /// Handles every message that has arrived already, without waiting.
    fn poll_ready(&mut self) -> Result<()> {
        while let Some(ws) = self.ws.as_mut() {
            match ws.next().now_or_never() {
                Some(item) => self.on_item(item)?,
                None => break,
            }
        }
        Ok(())
    }

    /// One step towards the answers: the next message, or a reconnect.
    async fn step(&mut self) -> Result<()> {
        if self.retry && self.wire.is_empty() {
            // Every frame written is answered: resend the UNAVAILABLE ones
            // on a fresh stream (after the reconnect's backoff).
            self.retry = false;
            self.shutdown_ws().await;
        }
        let Some(ws) = self.ws.as_mut() else {
            return self.reconnect().await;
        };
        match tokio::time::timeout(IDLE, ws.next()).await {
            Ok(item) => self.on_item(item),
            Err(_) => {
                self.lost_connection(format!("nothing heard for {IDLE:?}"));
                Ok(())
            }
        }
    }

    fn on_item(&mut self, item: Option<Result<Message, tungstenite::Error>>) -> Result<()> {
        match item {
            None => self.lost_connection("the connection ended".into()),
            Some(Err(e)) => self.lost_connection(format!("reading: {e}")),
            Some(Ok(Message::Text(text))) => self.on_text(text.as_str())?,
            Some(Ok(Message::Close(close))) => self.on_close(close)?,
            // Pings are answered by tungstenite as it reads.
            Some(Ok(_)) => {}
        }
        Ok(())
    }

    fn lost_connection(&mut self, why: String) {
        self.ws = None;
        self.wire.clear();
        self.last_error = Some(why);
    }

    /// An answer: for the oldest frame written on this connection.
    fn on_text(&mut self, text: &str) -> Result<()> {
        let v: Value = serde_json::from_str(text)
            .with_context(|| format!("the server sent a frame that is not JSON: {text}"))?;
        let seq = v["seq"].as_i64().or_else(|| self.wire.front().copied());
        if let Some(seq) = seq {
            if self.wire.front() == Some(&seq) {
                self.wire.pop_front();
            } else {
                self.wire.retain(|s| *s != seq);
            }
        }
        match v["type"].as_str() {
            Some("ack") => {
                let seq = seq.context("an ack without a seq")?;
                self.on_ack(seq, v["duplicate"] == true);
            }
            Some("error") => {
                let code = v["code"].as_str().unwrap_or("UNKNOWN").to_string();
                let message = v["message"].as_str().unwrap_or_default().to_string();
                self.on_error(seq.unwrap_or(0), code, message);
            }
            Some("finished") => {
                if let Some(seq) = seq {
                    self.unacked.remove(&seq);
                }
                self.failures = 0;
                self.finished = Some(v["run"].clone());
            }
            // Frames of a newer server: not for this runner.
            _ => {}
        }
        Ok(())
    }

    fn on_ack(&mut self, seq: i64, duplicate: bool) {
        if self.unacked.remove(&seq).is_some() {
            self.report.acked += 1;
            if duplicate {
                self.report.duplicates += 1;
            }
        }
        self.failures = 0;
        // A frame below a committed one cannot be written with its seq any
        // more (the server would take it for a resend): an UNAVAILABLE
        // refusal that a later frame overtook is final.
        let overtaken: Vec<i64> = self
            .unacked
            .range(..seq)
            .filter(|(_, f)| f.unavailable.is_some())
            .map(|(s, _)| *s)
            .collect();
        for s in overtaken {
            if let Some(Frame {
                unavailable: Some(message),
                ..
            }) = self.unacked.remove(&s)
            {
                let message = format!(
                    "{message} (not resent: frame {seq} committed first, so this seq would count as a duplicate)"
                );
                self.report.refused.push((s, "UNAVAILABLE".into(), message));
            }
        }
    }

    fn on_error(&mut self, seq: i64, code: String, message: String) {
        if code == "UNAVAILABLE" {
            if let Some(frame) = self.unacked.get_mut(&seq) {
                // Retryable: kept, resent once the connection drained.
                frame.unavailable = Some(message);
                self.retry = true;
                return;
            }
        }
        self.failures = 0;
        self.unacked.remove(&seq);
        self.report.refused.push((seq, code, message));
    }

    fn on_close(&mut self, close: Option<CloseFrame>) -> Result<()> {
        let (code, reason) = match &close {
            Some(c) => (u16::from(c.code), c.reason.as_str().to_string()),
            None => (1005, String::new()),
        };
        match code {
            1000 if self.finished.is_some() => self.lost_connection("finished".into()),
            1000 => {
                self.lost_connection(format!("closed 1000 {reason}"));
                return Err(RunFinished(format!("the stream closed (1000 {reason})")).into());
            }
            1009 => {
                // The server read up to the frame too large: the oldest
                // unanswered one. It is refused; the rest are resent.
                if let Some(seq) = self.wire.front().copied() {
                    self.unacked.remove(&seq);
                    let message = format!("closed 1009: {reason}");
                    self.report
                        .refused
                        .push((seq, "FRAME_TOO_LARGE".into(), message));
                }
                self.lost_connection(format!("closed 1009 {reason}"));
            }
            // Another stream on this run took over: that runner owns it now.
            1008 if reason.contains("replaced") => {
                self.lost_connection(format!("closed 1008 {reason}"));
                bail!("another stream took over the run: {code} {reason}");
            }
            1002 | 1003 | 1007 => {
                self.lost_connection(format!("closed {code} {reason}"));
                bail!("the server closed the stream: {code} {reason}");
            }
            // 1001 shutdown, 1008 silent, 1006 abnormal, ...
            _ => self.lost_connection(format!("closed {code} {reason}")),
        }
        Ok(())
    }

    /// Reconnects with exponential backoff, then resends every unanswered
    /// frame in seq order with its seq.
    async fn reconnect(&mut self) -> Result<()> {
        self.ws = None;
        self.wire.clear();
        // Everything unanswered is resent, UNAVAILABLE refusals included.
        self.retry = false;
        loop {
            if self.failures >= self.cfg.max_reconnects {
                let why = self.last_error.as_deref().unwrap_or("unknown");
                bail!(
                    "gave up after {} connection attempts in a row (last: {why})",
                    self.failures
                );
            }
            tokio::time::sleep(backoff(self.failures)).await;
            self.failures += 1;
            let ws = match self.connect().await {
                Ok(ws) => ws,
                Err(ConnectError::Fatal(e)) => return Err(e),
                Err(ConnectError::Retry(e)) => {
                    self.last_error = Some(format!("{e:#}"));
                    continue;
                }
            };
            self.report.reconnects += 1;
            self.ws = Some(ws);
            match self.resend_all().await {
                Ok(()) => return self.poll_ready(),
                Err(e) => self.lost_connection(format!("resending: {e}")),
            }
        }
    }

    async fn resend_all(&mut self) -> Result<(), tungstenite::Error> {
        let Some(ws) = self.ws.as_mut() else {
            return Ok(());
        };
        for (seq, frame) in self.unacked.iter_mut() {
            frame.unavailable = None;
            ws.feed(Message::Text(frame.text.clone())).await?;
            self.wire.push_back(*seq);
        }
        ws.flush().await
    }

    async fn connect(&self) -> Result<Ws, ConnectError> {
        let mut req = self
            .ws_url
            .as_str()
            .into_client_request()
            .map_err(|e| ConnectError::Fatal(anyhow!("{}: {e}", self.ws_url)))?;
        let headers = req.headers_mut();
        headers.insert("authorization", self.auth.clone());
        headers.insert("x-tenant-id", self.tenant.clone());
        let connecting = tokio_tungstenite::connect_async(req);
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Err(_) => Err(ConnectError::Retry(anyhow!(
                "connecting took over {CONNECT_TIMEOUT:?}"
            ))),
            Ok(Ok((ws, _))) => Ok(ws),
            Ok(Err(tungstenite::Error::Http(res))) => {
                let status = res.status();
                let body = res
                    .body()
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                let message = error_message(&body);
                if status.as_u16() == 409 {
                    Err(ConnectError::Fatal(RunFinished(message).into()))
                } else if status.is_server_error() || matches!(status.as_u16(), 408 | 429) {
                    Err(ConnectError::Retry(anyhow!("{status}: {message}")))
                } else {
                    Err(ConnectError::Fatal(anyhow!(
                        "{}: {status}: {message}",
                        self.ws_url
                    )))
                }
            }
            Ok(Err(e @ (tungstenite::Error::Url(_) | tungstenite::Error::HttpFormat(_)))) => {
                Err(ConnectError::Fatal(anyhow!("{}: {e}", self.ws_url)))
            }
            Ok(Err(e)) => Err(ConnectError::Retry(anyhow!("{e}"))),
        }
    }

    /// Closes the stream politely (bounded in time) and forgets it.
    async fn shutdown_ws(&mut self) {
        self.wire.clear();
        if let Some(mut ws) = self.ws.take() {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                if ws.close(None).await.is_ok() {
                    while let Some(Ok(_)) = ws.next().await {}
                }
            })
            .await;
        }
    }
}

/// The stream's URL for a run: `ws://` from `http://`, `wss://` from `https://`.
pub fn ws_url(base_url: &str, run_id: &str) -> Result<String> {
    let base = base_url.trim_end_matches('/');
    let ws = if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        bail!("the base URL must start with http:// or https://: {base_url:?}");
    };
    Ok(format!("{ws}/runs/{run_id}/stream"))
}

/// One line of an updates file: a JSON array of items, or one item object.
/// `None` for a blank line.
pub fn parse_line(line: &str) -> Result<Option<Vec<Value>>> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(None);
    }
    let value: Value = serde_json::from_str(line).context("not valid JSON")?;
    let items = match value {
        Value::Array(items) => items,
        item @ Value::Object(_) => vec![item],
        _ => bail!("must be a JSON array of items or one item object"),
    };
    check_items(&items)?;
    Ok(Some(items))
}

/// The shape the server needs before it looks closer: 1..500 objects with
/// a string `key` (the values are checked by the server).
fn check_items(items: &[Value]) -> Result<()> {
    if items.is_empty() || items.len() > MAX_ITEMS {
        bail!("a frame holds 1..{MAX_ITEMS} items, not {}", items.len());
    }
    for (i, item) in items.iter().enumerate() {
        if !item.get("key").is_some_and(Value::is_string) {
            bail!("item {i} must be an object with a string \"key\"");
        }
    }
    Ok(())
}

/// `{"type":"vars","seq":…,"vars":[…]}`.
pub fn vars_frame(seq: i64, items: &[Value]) -> String {
    json!({"type": "vars", "seq": seq, "vars": items}).to_string()
}

/// `{"type":"finish","seq":…,"status":…}`.
pub fn finish_frame(seq: i64, status: &str) -> String {
    json!({"type": "finish", "seq": seq, "status": status}).to_string()
}

/// The delay before reconnect attempt `attempt` (0-based): 100 ms doubling
/// to 5 s.
pub fn backoff(attempt: u32) -> Duration {
    BACKOFF_FIRST
        .saturating_mul(2u32.saturating_pow(attempt))
        .min(BACKOFF_MAX)
}

/// `code: message` of a JSON error body, or the body itself.
fn error_message(body: &str) -> String {
    match serde_json::from_str::<Value>(body) {
        Ok(v) if v["code"].is_string() => format!(
            "{}: {}",
            v["code"].as_str().unwrap_or_default(),
            v["message"].as_str().unwrap_or_default()
        ),
        _ => body.trim().chars().take(300).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_items() {
        assert_eq!(parse_line("").unwrap(), None);
        assert_eq!(parse_line("   \t").unwrap(), None);
        let items = parse_line(r#"[{"key":"a","strVal":"x"},{"key":"n","numVal":1}]"#)
            .unwrap()
            .unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[1], json!({"key": "n", "numVal": 1}));
        let one = parse_line(r#" {"key":"consent","boolVal":true} "#)
            .unwrap()
            .unwrap();
        assert_eq!(one, vec![json!({"key": "consent", "boolVal": true})]);
    }

    #[test]
    fn bad_lines_say_why() {
        for bad in [
            "{nope",
            "[]",
            "42",
            "\"a\"",
            "[1]",
            r#"[{"strVal":"x"}]"#,
            r#"{"key":1,"numVal":1}"#,
        ] {
            assert!(parse_line(bad).is_err(), "{bad}");
        }
        let many: Vec<Value> = (0..=MAX_ITEMS)
            .map(|i| json!({"key": format!("k{i}"), "numVal": i}))
            .collect();
        let line = Value::Array(many).to_string();
        let err = parse_line(&line).unwrap_err().to_string();
        assert!(err.contains("1..500"), "{err}");
    }

    #[test]
    fn frames_are_the_servers() {
        let items = vec![json!({"key": "a", "strVal": "x"})];
        let v: Value = serde_json::from_str(&vars_frame(7, &items)).unwrap();
        assert_eq!(
            v,
            json!({"type": "vars", "seq": 7, "vars": [{"key": "a", "strVal": "x"}]})
        );
        let v: Value = serde_json::from_str(&finish_frame(8, "FAILED")).unwrap();
        assert_eq!(v, json!({"type": "finish", "seq": 8, "status": "FAILED"}));
    }

    #[test]
    fn ws_urls_follow_the_base() {
        let id = "0193a0a0-0000-7000-8000-000000000001";
        assert_eq!(
            ws_url("http://127.0.0.1:8080", id).unwrap(),
            format!("ws://127.0.0.1:8080/runs/{id}/stream")
        );
        assert_eq!(
            ws_url("https://api.example.com/scriptd/", id).unwrap(),
            format!("wss://api.example.com/scriptd/runs/{id}/stream")
        );
        assert!(ws_url("127.0.0.1:8080", id).is_err());
        assert!(ws_url("ftp://x", id).is_err());
    }

    #[test]
    fn backoff_doubles_to_five_seconds() {
        let ms: Vec<u128> = (0..8).map(|a| backoff(a).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    fn offline() -> Runner {
        let cfg = RunnerConfig::new(
            "http://127.0.0.1:1",
            "t1",
            "alice",
            "0193a0a0-0000-7000-8000-000000000001",
        );
        Runner::unconnected(cfg).unwrap()
    }

    /// Frames 1..=n kept and written on the (imaginary) connection.
    fn sent(r: &mut Runner, n: i64) {
        for seq in 1..=n {
            r.keep(seq, vars_frame(seq, &[json!({"key": "a", "numVal": seq})]));
            r.wire.push_back(seq);
        }
        r.next_seq = n + 1;
    }

    #[test]
    fn answers_settle_frames() {
        let mut r = offline();
        sent(&mut r, 4);
        r.on_text(r#"{"type":"ack","seq":1,"upserted":1}"#).unwrap();
        r.on_text(r#"{"type":"ack","seq":2,"upserted":0,"duplicate":true}"#)
            .unwrap();
        r.on_text(
            r#"{"type":"error","seq":3,"code":"VALIDATION_FAILED","message":"bad","details":{}}"#,
        )
        .unwrap();
        assert_eq!(r.unacked(), 1);
        assert_eq!(r.wire, [4]);
        // An error without a seq is the oldest frame's.
        r.on_text(r#"{"type":"error","seq":null,"code":"MALFORMED_JSON","message":"?"}"#)
            .unwrap();
        assert_eq!(r.unacked(), 0);
        let report = r.report();
        assert_eq!((report.acked, report.duplicates), (2, 1));
        assert_eq!(
            report.refused,
            [
                (3, "VALIDATION_FAILED".into(), "bad".into()),
                (4, "MALFORMED_JSON".into(), "?".into())
            ]
        );
    }

    #[test]
    fn unavailable_is_kept_for_a_resend_unless_overtaken() {
        let mut r = offline();
        sent(&mut r, 3);
        r.on_text(r#"{"type":"error","seq":1,"code":"UNAVAILABLE","message":"busy"}"#)
            .unwrap();
        assert!(r.retry);
        assert_eq!(r.unacked(), 3);
        r.on_text(r#"{"type":"error","seq":2,"code":"UNAVAILABLE","message":"busy"}"#)
            .unwrap();
        assert!(r.report().refused.is_empty());
        // Frame 3 committed: 1 and 2 can no longer be written as 1 and 2.
        r.on_text(r#"{"type":"ack","seq":3,"upserted":1}"#).unwrap();
        assert_eq!(r.unacked(), 0);
        let codes: Vec<(i64, &str)> = r
            .report()
            .refused
            .iter()
            .map(|(s, c, _)| (*s, c.as_str()))
            .collect();
        assert_eq!(codes, [(1, "UNAVAILABLE"), (2, "UNAVAILABLE")]);
    }

    #[test]
    fn closes_decide_what_next() {
        let mut r = offline();
        sent(&mut r, 2);
        let close = |code: u16| {
            Some(CloseFrame {
                code: code.into(),
                reason: "why".into(),
            })
        };
        r.on_close(close(1001)).unwrap();
        assert_eq!((r.unacked(), r.wire.len()), (2, 0));
        r.wire.extend([1, 2]);
        r.on_close(close(1009)).unwrap();
        assert_eq!(r.unacked(), 1);
        assert_eq!(r.report().refused[0].1, "FRAME_TOO_LARGE");
        let err = r.on_close(close(1000)).unwrap_err();
        assert!(err.is::<RunFinished>());
        assert!(r.on_close(close(1003)).is_err());
    }

    #[test]
    fn config_debug_hides_the_token() {
        let cfg = RunnerConfig::new("http://x", "t1", "secret-token", "r");
        assert!(!format!("{cfg:?}").contains("secret-token"));
    }
}
