//! The door to commands: accepted into the transactional outbox (one
//! transaction here), dispatched by the OutboxActor, read from the store.

use uuid::Uuid;

use serde_json::json;

use crate::bus::{Bus, CompletionMessage};
use crate::domain::command::Ignored;
use crate::domain::{Accepted, Command, Error, ErrorCode, NewCommand, Report, Result, TenantId};
use crate::outbox::{self, Addressed, Applied, BatchOutcome, Outbox, OutboxConfig};
use crate::store::commands::Target;
use crate::store::idempotency::Idem;
use crate::store::{self, commands as sql, Db};

/// Commands by status, and the age of the oldest PENDING one (metrics).
pub use crate::store::commands::OutboxDepth;

#[derive(Clone)]
pub struct Commands {
    pub(crate) db: Db,
    pub(crate) outbox: Option<Outbox>,
    pub(crate) config: OutboxConfig,
    pub(crate) bus: Option<Bus>,
}

/// What became of a completion that arrived over the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusOutcome {
    Applied,
    /// Acknowledged and ignored: why, for the log.
    Ignored(&'static str),
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

    /// `POST /commands/:correlationId/complete`: a handler's answer over
    /// HTTP. Already final: `409 COMMAND_FINAL` and nothing changes.
    pub async fn complete(
        &self,
        tenant: &TenantId,
        correlation_id: Uuid,
        report: &Report,
    ) -> Result<Command> {
        let target = Target::Correlation(tenant.as_str(), correlation_id);
        let (command, applied) = self
            .apply(target, report)
            .await?
            .ok_or_else(|| Error::not_found("command"))?;
        match applied {
            Applied::Changed(row) => Ok(*row),
            Applied::Ignored(_) => Err(Error::rejected_with(
                ErrorCode::CommandFinal,
                format!("the command is already {}", command.status.as_str()),
                json!({ "status": command.status.as_str() }),
            )),
        }
    }

    /// Completions from the bus, applied in one transaction (one commit and a
    /// fixed number of statements for the batch; rows locked in id order, so
    /// that concurrent batches cannot deadlock). Each is applied once, or ignored (unknown command, another
    /// tenant's, already final, or for an attempt no longer current). The
    /// outcomes come back in the order given.
    pub async fn complete_batch(&self, batch: &[&CompletionMessage]) -> Result<Vec<BusOutcome>> {
        let reports: Vec<Addressed> = batch
            .iter()
            .map(|c| Addressed {
                command_id: c.command_id,
                tenant: &c.tenant_id,
                report: &c.report,
            })
            .collect();
        let mut client = self.db.write().await?;
        let tx = client.transaction().await?;
        let outcomes = outbox::apply_many(&tx, &reports, &self.config, store::now_ms()).await?;
        tx.commit().await?;
        Ok(outcomes
            .into_iter()
            .map(|o| match o {
                BatchOutcome::Applied => BusOutcome::Applied,
                BatchOutcome::Unknown => {
                    BusOutcome::Ignored("unknown command, or another tenant's")
                }
                BatchOutcome::Ignored(Ignored::Final) => {
                    BusOutcome::Ignored("command already final")
                }
                BatchOutcome::Ignored(Ignored::Stale) => {
                    BusOutcome::Ignored("attempt no longer current")
                }
            })
            .collect())
    }

    async fn apply(
        &self,
        target: Target<'_>,
        report: &Report,
    ) -> Result<Option<(Command, Applied)>> {
        let mut client = self.db.write().await?;
        let tx = client.transaction().await?;
        let Some(command) = sql::lock(&tx, target).await? else {
            return Ok(None);
        };
        let applied = outbox::apply(&tx, &command, report, &self.config, store::now_ms()).await?;
        tx.commit().await?;
        Ok(Some((command, applied)))
    }

    /// The bus, when `[bus]` is configured (its state and counters).
    pub fn bus(&self) -> Option<&Bus> {
        self.bus.as_ref()
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
