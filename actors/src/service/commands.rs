//! The door to commands: accepted into the transactional outbox (one
//! transaction here), dispatched by the OutboxActor, read from the store.

use uuid::Uuid;

use crate::domain::{Accepted, Command, Error, NewCommand, Result, TenantId};
use crate::outbox::Outbox;
use crate::store::idempotency::Idem;
use crate::store::{self, commands as sql, Db};

/// Commands by status, and the age of the oldest PENDING one (metrics).
pub use crate::store::commands::OutboxDepth;

#[derive(Clone)]
pub struct Commands {
    pub(crate) db: Db,
    pub(crate) outbox: Option<Outbox>,
}

impl Commands {
    /// `POST /commands`: persists a PENDING command (announced with NOTIFY).
    #[tracing::instrument(level = "debug", skip_all, fields(tenant = %command.tenant_id, correlation = %command.correlation_id))]
    pub async fn accept(
        &self,
        command: &NewCommand,
        idem: Option<&Idem<Accepted>>,
    ) -> Result<Accepted> {
        let mut client = self.db.write().await?;
        let tx = client.transaction().await?;
        let id = sql::insert(&tx, command, store::now_ms()).await?;
        let accepted = Accepted {
            command_id: id,
            correlation_id: command.correlation_id,
        };
        if let Some(idem) = idem {
            idem.complete(&tx, &accepted).await?;
        }
        tx.commit().await?;
        Ok(accepted)
    }

    /// A command of the tenant by its correlation id.
    pub async fn get(&self, tenant: &TenantId, correlation_id: Uuid) -> Result<Command> {
        let client = self.db.read().await?;
        sql::get_by_correlation(&client, tenant.as_str(), correlation_id)
            .await?
            .ok_or_else(|| Error::not_found("command"))
    }

    pub async fn depth(&self) -> Result<OutboxDepth> {
        let client = self.db.read().await?;
        sql::stats(&client).await
    }

    /// The outbox logic (None without a dispatcher): `poll_once` for tests.
    pub fn outbox(&self) -> Option<&Outbox> {
        self.outbox.as_ref()
    }
}
