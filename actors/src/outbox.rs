//! OutboxActor: one per process. Woken by NOTIFY (and a poll timer as the
//! fallback), it returns expired leases to PENDING, claims due commands with
//! `FOR UPDATE SKIP LOCKED`, dispatches them concurrently and records each
//! outcome together with its completion event in one transaction.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde_json::json;

use crate::domain::command::Completion;
use crate::domain::{Command, CommandStatus, Completed, NewEvent, Result};
use crate::keyed::{ActorMeta, Coalesce};
use crate::store::{self, commands as sql, events, Db};
use crate::workers::dispatcher::Dispatcher;

const CLAIM_BATCH: i64 = 64;

#[derive(Debug, Clone)]
pub struct OutboxConfig {
    pub poll_interval: Duration,
    pub lease: Duration,
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

/// The outbox logic, usable without the actor (`poll_once` in tests).
#[derive(Clone)]
pub struct Outbox {
    db: Db,
    dispatcher: Arc<dyn Dispatcher>,
    config: OutboxConfig,
    polls: Arc<AtomicU64>,
}

/// The delay before attempt `attempt + 1`: base * 2^(attempt-1), capped.
pub fn backoff(config: &OutboxConfig, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
    config
        .backoff_base
        .saturating_mul(factor)
        .min(config.backoff_max)
}

impl Outbox {
    pub fn new(db: Db, dispatcher: Arc<dyn Dispatcher>, config: OutboxConfig) -> Self {
        Outbox {
            db,
            dispatcher,
            config,
            polls: Arc::default(),
        }
    }

    /// Claims made so far (each NOTIFY, timer tick or `poll_once` is one).
    pub fn polls(&self) -> u64 {
        self.polls.load(Ordering::Relaxed)
    }

    /// Returns expired leases to PENDING and claims a batch of due commands.
    pub async fn claim(&self) -> Result<Vec<Command>> {
        self.polls.fetch_add(1, Ordering::Relaxed);
        let now = store::now_ms();
        let mut client = self.db.write().await?;
        let released = sql::release_expired(&client, now).await?;
        if released > 0 {
            tracing::warn!(released, "returned expired outbox leases to PENDING");
        }
        let lease_until = now + chrono::Duration::from_std(self.config.lease).unwrap_or_default();
        let tx = client.transaction().await?;
        let claimed = sql::claim(&tx, CLAIM_BATCH, lease_until, now).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    /// Dispatches one claimed command and records the outcome.
    pub async fn process(&self, command: Command) -> Result<()> {
        let outcome = self.dispatcher.dispatch(&command).await;
        let attempt = command.attempts;
        match outcome {
            Ok(completion) => {
                self.finish(&command, CommandStatus::Completed, completion, None)
                    .await
            }
            Err(error) if attempt as u32 >= self.config.max_attempts => {
                tracing::warn!(command = %command.id, attempt, %error, "command failed for good");
                let completion = Completion {
                    event: "Command.Failed.v1".into(),
                    success: false,
                    payload: json!({ "command": command.command, "error": error }),
                };
                self.finish(&command, CommandStatus::Failed, completion, Some(&error))
                    .await
            }
            Err(error) => {
                let delay = backoff(&self.config, attempt as u32);
                tracing::info!(command = %command.id, attempt, %error, ?delay, "command failed; retrying later");
                let now = store::now_ms();
                let next = now + chrono::Duration::from_std(delay).unwrap_or_default();
                let client = self.db.write().await?;
                sql::retry_later(&client, command.id, attempt, &error, next, now).await?;
                Ok(())
            }
        }
    }

    /// The outcome and its event, in one transaction, if our claim still holds.
    async fn finish(
        &self,
        command: &Command,
        status: CommandStatus,
        completion: Completion,
        error: Option<&str>,
    ) -> Result<()> {
        let now = store::now_ms();
        let event = NewEvent {
            tenant_id: command.tenant_id.clone(),
            name: completion.event.clone(),
            correlation_id: Some(command.correlation_id.to_string()),
            success: completion.success,
            payload: completion.payload.clone(),
        };
        let result = Completed {
            event: event.clone(),
            occurred_at: now,
        };
        let mut client = self.db.write().await?;
        let tx = client.transaction().await?;
        if !sql::finish(
            &tx,
            command.id,
            command.attempts,
            status,
            &result,
            error,
            now,
        )
        .await?
        {
            tracing::warn!(command = %command.id, "lost the lease before finishing; another process owns it");
            return Ok(());
        }
        events::append(&tx, &[event], now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Claims due commands and processes them all before returning (tests,
    /// and anyone who wants one synchronous round).
    pub async fn poll_once(&self) -> Result<usize> {
        let claimed = self.claim().await?;
        let n = claimed.len();
        let results = futures::future::join_all(claimed.into_iter().map(|c| self.process(c))).await;
        for r in results {
            r?;
        }
        Ok(n)
    }
}

/// Wake the outbox now (a NOTIFY arrived, or the listener reconnected).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Poke;

pub struct OutboxActor {
    outbox: Outbox,
    meta: Arc<ActorMeta>,
    polling: Coalesce,
}

impl OutboxActor {
    pub fn new(outbox: Outbox, meta: Arc<ActorMeta>) -> Self {
        OutboxActor {
            outbox,
            meta,
            polling: Coalesce::default(),
        }
    }

    fn poll(&mut self, ctx: &mut Context<Self>) {
        if !self.polling.start() {
            return;
        }
        let outbox = self.outbox.clone();
        ctx.spawn(
            async move { outbox.claim().await }
                .into_actor(self)
                .map(|res, act, ctx| {
                    let again = act.polling.finish();
                    match res {
                        Ok(claimed) => {
                            let full = claimed.len() as i64 == CLAIM_BATCH;
                            for command in claimed {
                                // Dispatches run concurrently and outlive this poll.
                                let outbox = act.outbox.clone();
                                actix::spawn(async move {
                                    let id = command.id;
                                    if let Err(e) = outbox.process(command).await {
                                        tracing::warn!(command = %id, error = %e, "recording a command outcome failed; its lease will expire and it will be retried");
                                    }
                                });
                            }
                            if full || again {
                                act.poll(ctx);
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "outbox poll failed"),
                    }
                }),
        );
    }
}

impl Actor for OutboxActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let every = self
            .outbox
            .config
            .poll_interval
            .max(Duration::from_millis(10));
        ctx.run_interval(every, |act, ctx| act.poll(ctx));
        self.poll(ctx);
    }
}

/// Supervised like the keyed actors (it never stops itself; after a panic
/// its `Singleton` starts it afresh).
impl Supervised for OutboxActor {}

impl Handler<Poke> for OutboxActor {
    type Result = ();

    fn handle(&mut self, _: Poke, ctx: &mut Context<Self>) {
        self.meta.received();
        self.poll(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let c = OutboxConfig {
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(30),
            max_attempts: 5,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_millis(3000),
        };
        let got: Vec<u128> = (1..=6).map(|a| backoff(&c, a).as_millis()).collect();
        assert_eq!(got, vec![500, 1000, 2000, 3000, 3000, 3000]);
    }
}
