//! An SSE session: the replay of stored events after `Last-Event-ID`, then
//! the hub's live feed, with pings; bounded in frames and bytes towards the
//! client, and ended when the client stops reading. The edge only says how
//! an event or a control message is framed (`Framer`).

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::domain::{CorrelationId, Event, TenantId};
use crate::hub::{EventHub, Subscribe, Subscription, Unsubscribe};
use crate::keyed::Singleton;
use crate::store::{events as sql, Db};

/// Rows of one replay page at most.
const REPLAY_PAGE: i64 = 200;
/// Payload bytes of one replay page at most (past its first event).
const REPLAY_PAGE_BYTES: i64 = 256 * 1024;
/// Frames buffered between the session task and the response...
const OUT_FRAMES: usize = 64;
/// ...and their bytes at most (a larger frame passes alone).
const OUT_BYTES: usize = 256 * 1024;

/// A message of the stream that is not an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Keep-alive, every `keepalive`.
    Ping,
    /// The client's `Last-Event-ID` is outside the retained history.
    Reset,
}

/// How the edge frames what a session sends.
pub trait Framer: Send + Sync + 'static {
    type Frame: Send + 'static;
    /// The frame and its size in bytes.
    fn event(&self, ev: &Event) -> (Self::Frame, usize);
    fn control(&self, c: Control) -> (Self::Frame, usize);
}

/// The settings of every session.
#[derive(Clone)]
pub struct SessionConfig {
    pub keepalive: Duration,
    /// A frame the client has not taken within this is a reader that stopped
    /// reading: the session ends.
    pub slow_reader: Duration,
}

/// What one session asks for.
pub struct Filter {
    pub tenant: TenantId,
    pub correlation: Option<CorrelationId>,
    /// Replay the matching events after this id first.
    pub last_event_id: Option<i64>,
}

/// Subscribes to the hub and starts the session; the stream ends when the
/// session does.
pub async fn open<F: Framer>(
    hub: &Singleton<EventHub>,
    db: Db,
    replays: Arc<Semaphore>,
    config: SessionConfig,
    filter: Filter,
    framer: F,
) -> crate::domain::Result<impl Stream<Item = F::Frame>> {
    let sub = hub
        .send(Subscribe {
            tenant: filter.tenant.to_string(),
            correlation: filter.correlation.as_ref().map(|c| c.to_string()),
        })
        .await?;
    let (tx, mut rx) = mpsc::channel(OUT_FRAMES);
    let session = Session {
        db,
        replays,
        hub: hub.clone(),
        filter,
        config,
        framer,
        out: Out {
            tx,
            bytes: Arc::new(Semaphore::new(OUT_BYTES)),
        },
    };
    actix::spawn(session.run(sub));
    // A frame's bytes are released when the response takes it.
    Ok(futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|next| next.map(|(frame, _bytes): (F::Frame, OwnedSemaphorePermit)| frame))
    }))
}

/// The session's side of the response: frames, bounded in count and bytes.
struct Out<T> {
    tx: mpsc::Sender<(T, OwnedSemaphorePermit)>,
    bytes: Arc<Semaphore>,
}

struct Session<F: Framer> {
    db: Db,
    /// Bounds how many replay pages are read at once, process-wide, so that
    /// replays never take the connections that writes need.
    replays: Arc<Semaphore>,
    hub: Singleton<EventHub>,
    filter: Filter,
    config: SessionConfig,
    framer: F,
    out: Out<F::Frame>,
}

impl<F: Framer> Session<F> {
    async fn run(self, sub: Subscription) {
        let id = sub.id;
        if let Err(e) = self.pump(sub).await {
            tracing::debug!(session = id, reason = %e, "SSE session ended");
        }
        // Removed from the hub at once.
        self.hub.do_send(Unsubscribe(id));
    }

    /// Hands one frame to the response, or ends the session when the client
    /// has not made room for it within `slow_reader`.
    async fn send(&self, (frame, size): (F::Frame, usize)) -> anyhow::Result<()> {
        // A frame larger than the whole budget takes all of it.
        let size = size.clamp(1, OUT_BYTES) as u32;
        let handed = async {
            let bytes = self.out.bytes.clone().acquire_many_owned(size).await?;
            self.out
                .tx
                .send((frame, bytes))
                .await
                .map_err(|_| anyhow::anyhow!("the client went away"))
        };
        match tokio::time::timeout(self.config.slow_reader, handed).await {
            Ok(res) => res,
            Err(_) => anyhow::bail!("the client stopped reading"),
        }
    }

    async fn pump(&self, sub: Subscription) -> anyhow::Result<()> {
        let mut live = sub.rx;
        // Live events start after the hub's position, or after what the client
        // has seen when this hub lags behind the table.
        let mut floor = sub.cursor;
        if let Some(after) = self.filter.last_event_id {
            if self.replay(after, sub.cursor).await? {
                floor = floor.max(after);
            }
        }
        let keepalive = self.config.keepalive;
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
        loop {
            tokio::select! {
                ev = live.recv() => match ev {
                    // Events up to the cursor came from the replay.
                    Some(ev) if ev.id > floor => self.send(self.framer.event(&ev)).await?,
                    Some(_) => {}
                    None => anyhow::bail!("the hub dropped the session (it fell behind, or shutdown)"),
                },
                _ = ping.tick() => self.send(self.framer.control(Control::Ping)).await?,
                _ = self.out.tx.closed() => anyhow::bail!("the client went away"),
            }
        }
    }

    /// One page of the replay, read on a connection that is released before
    /// anything is sent.
    async fn page(&self, from: i64, cursor: i64, limit: i64) -> anyhow::Result<Vec<Event>> {
        let _slot = self.replays.acquire().await?;
        let client = self.db.read().await?;
        Ok(sql::replay(
            &client,
            self.filter.tenant.as_str(),
            self.filter.correlation.as_ref().map(|c| c.as_str()),
            from,
            cursor,
            limit,
            REPLAY_PAGE_BYTES,
        )
        .await?)
    }

    /// Whether `after` is outside the retained history (older than the
    /// oldest event kept, or newer than the newest).
    async fn outside_history(&self, after: i64) -> anyhow::Result<bool> {
        let bounds = {
            let _slot = self.replays.acquire().await?;
            let client = self.db.read().await?;
            sql::bounds(&client).await?
        };
        Ok(match bounds {
            (Some(min), Some(max)) => after < min - 1 || after > max,
            // Nothing retained: any id the client saw is gone.
            _ => after > 0,
        })
    }

    /// The stored events in `(after, cursor]` that match, or `reset` when
    /// `after` is outside the retained history. False when it sent `reset`.
    ///
    /// No connection is held while a frame waits for the client, and a
    /// session holds at most one page (bounded in rows and bytes) at a time.
    async fn replay(&self, after: i64, cursor: i64) -> anyhow::Result<bool> {
        if self.outside_history(after).await? {
            self.send(self.framer.control(Control::Reset)).await?;
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
                self.send(self.framer.event(&ev)).await?;
            }
            if from >= cursor {
                return Ok(true);
            }
        }
    }
}
