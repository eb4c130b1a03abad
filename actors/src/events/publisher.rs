//! `EventPublisher`: how any part of scriptd appends events. Inside an existing
//! transaction use `store::events::append` (the event then commits with the
//! write it describes); otherwise `publish` runs its own transaction.

use deadpool_postgres::Pool;

use crate::error::Result;
use crate::events::model::NewEvent;
use crate::store::{self, events};

#[derive(Clone)]
pub struct EventPublisher {
    pool: Pool,
}

impl EventPublisher {
    pub fn new(pool: Pool) -> Self {
        EventPublisher { pool }
    }

    /// Appends `batch` in one transaction; returns their ids.
    pub async fn publish(&self, batch: &[NewEvent]) -> Result<Vec<i64>> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let ids = events::append(&tx, batch, store::now_ms()).await?;
        tx.commit().await?;
        Ok(ids)
    }
}
