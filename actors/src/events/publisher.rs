//! `EventPublisher`: how any part of scriptd appends events. Inside an existing
//! transaction use `store::events::append` (the event then commits with the
//! write it describes); otherwise `publish` hands them to the process's
//! appender, which batches concurrent appends into one transaction.

use crate::error::Result;
use crate::events::appender::EventAppender;
use crate::events::model::NewEvent;

#[derive(Clone)]
pub struct EventPublisher {
    appender: EventAppender,
}

impl EventPublisher {
    pub fn new(appender: EventAppender) -> Self {
        EventPublisher { appender }
    }

    /// Queues `batch` without waiting (in submission order with every other
    /// publish of this process).
    pub fn publish_detached(&self, batch: Vec<NewEvent>) {
        self.appender.append_detached(batch)
    }

    /// Waits until every batch queued before this call has been appended (or
    /// has failed, which its own producer was told).
    pub async fn flushed(&self) {
        // An empty batch takes its turn in the queue and writes nothing.
        let _ = self.appender.append(Vec::new()).await;
    }

    /// Appends `batch` (in order) and waits for the commit; returns their ids.
    pub async fn publish(&self, batch: &[NewEvent]) -> Result<Vec<i64>> {
        self.appender.append(batch.to_vec()).await
    }
}
