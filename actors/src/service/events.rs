//! The door to events: the SSE sessions (replay, then the hub's live feed),
//! publishing outside a write's transaction, retention.

use std::collections::HashMap;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::Semaphore;

use crate::domain::{NewEvent, Result};
use crate::hub::{EventHub, HubStats, Purge, SessionCounts};
use crate::keyed::Singleton;
use crate::sse::{self, Filter, Framer, SessionConfig};
use crate::store::Db;
use crate::workers::appender::EventPublisher;

#[derive(Clone)]
pub struct Events {
    pub(crate) db: Db,
    pub(crate) hub: Singleton<EventHub>,
    pub(crate) stats: Arc<HubStats>,
    pub(crate) publisher: EventPublisher,
    pub(crate) replays: Arc<Semaphore>,
    pub(crate) sessions: SessionConfig,
}

impl Events {
    /// Opens an SSE session: frames from `framer`, until the client leaves,
    /// stops reading, or falls behind.
    pub async fn stream<F: Framer>(
        &self,
        filter: Filter,
        framer: F,
    ) -> Result<impl Stream<Item = F::Frame>> {
        sse::open(
            &self.hub,
            self.db.clone(),
            self.replays.clone(),
            self.sessions.clone(),
            filter,
            framer,
        )
        .await
    }

    /// Appends events outside any write and waits for their commit.
    pub async fn publish(&self, events: &[NewEvent]) -> Result<Vec<i64>> {
        self.publisher.publish(events.to_vec()).await
    }

    /// Waits until every event queued so far is appended.
    pub async fn flushed(&self) {
        self.publisher.flushed().await
    }

    /// Open sessions per tenant.
    pub async fn session_counts(&self) -> Result<HashMap<String, usize>> {
        self.hub.send(SessionCounts).await
    }

    /// Deletes events past retention now (it also runs every minute).
    pub async fn purge(&self) -> Result<u64> {
        self.hub.send(Purge).await?
    }

    /// Ends every session (shutdown).
    pub async fn close_all(&self) {
        let _ = self.hub.send(crate::hub::CloseAll).await;
    }

    pub fn stats(&self) -> &HubStats {
        &self.stats
    }

    pub fn hub(&self) -> &Singleton<EventHub> {
        &self.hub
    }
}
