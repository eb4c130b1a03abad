//! The process's event appender: one writer that takes events from every part
//! of the process and appends whatever has queued up in one transaction
//! (group commit), in submission order. Producers that await their append keep
//! their own events in order; the advisory lock still orders appends across
//! processes.
//!
//! `EventPublisher` is how any part of scriptd appends events outside a
//! write's transaction. Inside one, use `store::events::append`: the event
//! then commits with the write it describes.

use tokio::sync::{mpsc, oneshot};

use crate::domain::{Error, NewEvent, Result};
use crate::store::{self, events, Db};

/// Events appended in one transaction at most.
const MAX_BATCH: usize = 2000;

type Reply = oneshot::Sender<Result<Vec<i64>>>;

#[derive(Clone)]
pub struct EventPublisher {
    tx: mpsc::UnboundedSender<(Vec<NewEvent>, Option<Reply>)>,
}

impl EventPublisher {
    /// Starts the writer task on the current runtime.
    pub fn start(db: Db) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        actix::spawn(run(db, rx));
        EventPublisher { tx }
    }

    /// Queues `events` without waiting. Appends happen in submission order,
    /// so one producer's events keep their order.
    pub fn publish_detached(&self, events: Vec<NewEvent>) {
        if self.tx.send((events, None)).is_err() {
            tracing::warn!("the event appender stopped; events dropped");
        }
    }

    /// Waits until every batch queued before this call has been appended (or
    /// has failed, which its own producer was told).
    pub async fn flushed(&self) {
        // An empty batch takes its turn in the queue and writes nothing.
        let _ = self.publish(Vec::new()).await;
    }

    /// Appends `events` and waits for the commit; returns their ids.
    pub async fn publish(&self, events: Vec<NewEvent>) -> Result<Vec<i64>> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((events, Some(reply)))
            .map_err(|_| Error::Unavailable(anyhow::anyhow!("the event appender stopped")))?;
        rx.await.unwrap_or_else(|_| {
            Err(Error::Unavailable(anyhow::anyhow!(
                "the event appender stopped"
            )))
        })
    }
}

async fn run(db: Db, mut rx: mpsc::UnboundedReceiver<(Vec<NewEvent>, Option<Reply>)>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let mut size = batch[0].0.len();
        while size < MAX_BATCH {
            match rx.try_recv() {
                Ok(item) => {
                    size += item.0.len();
                    batch.push(item);
                }
                Err(_) => break,
            }
        }
        let all: Vec<NewEvent> = batch.iter().flat_map(|(e, _)| e.iter().cloned()).collect();
        match write(&db, &all).await {
            Ok(ids) => {
                let mut ids = ids.into_iter();
                for (events, reply) in batch {
                    let mine: Vec<i64> = ids.by_ref().take(events.len()).collect();
                    if let Some(r) = reply {
                        let _ = r.send(Ok(mine));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, events = all.len(), "appending events failed");
                let msg = e.to_string();
                for (_, reply) in batch {
                    if let Some(r) = reply {
                        let _ = r.send(Err(Error::Unavailable(anyhow::anyhow!(
                            "appending events failed: {msg}"
                        ))));
                    }
                }
            }
        }
    }
}

/// One statement, its own transaction: one round trip per batch.
async fn write(db: &Db, all: &[NewEvent]) -> Result<Vec<i64>> {
    let client = db.write().await?;
    events::append(&client, all, store::now_ms()).await
}
