//! OutboxActor: one per process. Woken by NOTIFY (and a poll timer as the
//! fallback), it hands due commands to the dispatcher:
//!
//! - in process (the dev worker): claims due commands with `FOR UPDATE SKIP
//!   LOCKED` under a lease, dispatches them concurrently and records each
//!   outcome together with its completion event in one transaction;
//! - over the bus: publishes due commands to JetStream and marks them
//!   PROCESSING once JetStream acknowledged, with a deadline; completions come
//!   back through `bus::completions` and `apply`. Passed deadlines are failed
//!   attempts, found by whichever process polls first.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::json;

use crate::bus::{Bus, CommandMessage};
use crate::domain::command::{decide, Completion, Ignored, Outcome};
use crate::domain::{Command, CommandStatus, Completed, NewEvent, Report, Result};
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
    /// How long a handler on the bus has to answer an attempt.
    pub completion_timeout: Duration,
}

/// Who executes commands.
#[derive(Clone)]
pub enum Dispatch {
    /// In this process (the dev worker), under a lease.
    InProcess(Arc<dyn Dispatcher>),
    /// Handlers on NATS JetStream.
    Bus(Bus),
}

/// The outbox logic, usable without the actor (`poll_once` in tests).
#[derive(Clone)]
pub struct Outbox {
    db: Db,
    dispatch: Dispatch,
    config: OutboxConfig,
    polls: Arc<AtomicU64>,
    /// Publish rounds that failed in a row (the backoff of deferred commands).
    publish_failures: Arc<AtomicU32>,
}

/// The delay before attempt `attempt + 1`: base * 2^(attempt-1), capped.
pub fn backoff(config: &OutboxConfig, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
    config
        .backoff_base
        .saturating_mul(factor)
        .min(config.backoff_max)
}

fn after(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(d).unwrap_or_default()
}

/// What a report did to a command.
#[derive(Debug, Clone)]
pub enum Applied {
    /// The command as it now is (final, or PENDING for another attempt).
    Changed(Box<Command>),
    Ignored(Ignored),
}

/// Applies a handler's report (or a passed deadline) to a command locked in
/// `tx`: the new row and its event, or the retry, in the caller's transaction.
pub async fn apply(
    tx: &impl GenericClient,
    command: &Command,
    report: &Report,
    config: &OutboxConfig,
    now: DateTime<Utc>,
) -> Result<Applied> {
    match decide(command, report, config.max_attempts) {
        Outcome::Ignore(why) => Ok(Applied::Ignored(why)),
        Outcome::Finish {
            status,
            completion,
            error,
        } => {
            let (event, result) = completed(command, completion, now);
            let row =
                sql::set_final(tx, command.id, status, &result, error.as_deref(), now).await?;
            events::append(tx, &[event], now).await?;
            Ok(Applied::Changed(Box::new(row)))
        }
        Outcome::Retry { error, attempt } => {
            let next = retry_at(config, attempt, now);
            let row = sql::set_retry(tx, command.id, &error, next, now).await?;
            Ok(Applied::Changed(Box::new(row)))
        }
    }
}

/// What became of one report of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
    Applied,
    /// No such command in that tenant.
    Unknown,
    Ignored(Ignored),
}

/// One report of a batch: the command it names, in its tenant.
pub struct Addressed<'a> {
    pub command_id: uuid::Uuid,
    pub tenant: &'a str,
    pub report: &'a Report,
}

/// Applies many reports in the caller's transaction with a fixed number of
/// statements: one lock of every row named, then the retries, the final
/// rows and their events, each in one statement. Reports are decided in
/// order against the state the earlier ones left (a duplicate after a final
/// outcome is ignored). Outcomes come back in the order given.
pub async fn apply_many(
    tx: &impl GenericClient,
    reports: &[Addressed<'_>],
    config: &OutboxConfig,
    now: DateTime<Utc>,
) -> Result<Vec<BatchOutcome>> {
    let ids: Vec<uuid::Uuid> = reports.iter().map(|r| r.command_id).collect();
    let mut rows: std::collections::HashMap<uuid::Uuid, Command> = sql::lock_many(tx, &ids)
        .await?
        .into_iter()
        .map(|c| (c.id, c))
        .collect();
    let mut outcomes = Vec::with_capacity(reports.len());
    let (mut finals, mut retries, mut events_out) = (Vec::new(), Vec::new(), Vec::new());
    for r in reports {
        let Some(command) = rows
            .get_mut(&r.command_id)
            .filter(|c| c.tenant_id == r.tenant)
        else {
            outcomes.push(BatchOutcome::Unknown);
            continue;
        };
        outcomes.push(match decide(command, r.report, config.max_attempts) {
            Outcome::Ignore(why) => BatchOutcome::Ignored(why),
            Outcome::Finish {
                status,
                completion,
                error,
            } => {
                let (event, result) = completed(command, completion, now);
                command.status = status;
                finals.push((command.id, status, result, error));
                events_out.push(event);
                BatchOutcome::Applied
            }
            Outcome::Retry { error, attempt } => {
                command.status = CommandStatus::Pending;
                let next = retry_at(config, attempt, now);
                retries.push((command.id, error, next));
                BatchOutcome::Applied
            }
        });
    }
    // A command retried, then completed in the same batch: the final row last.
    sql::set_retry_many(tx, &retries, now).await?;
    let finals: Vec<sql::FinalRow> = finals
        .iter()
        .map(|(id, status, result, error)| sql::FinalRow {
            id: *id,
            status: *status,
            result,
            error: error.as_deref(),
        })
        .collect();
    sql::set_final_many(tx, &finals, now).await?;
    events::append(tx, &events_out, now).await?;
    Ok(outcomes)
}

/// When a retried attempt is due again.
fn retry_at(config: &OutboxConfig, attempt: i32, now: DateTime<Utc>) -> DateTime<Utc> {
    after(now, backoff(config, attempt.max(1) as u32))
}

/// A command's completion event, and the result its row keeps.
fn completed(
    command: &Command,
    completion: Completion,
    now: DateTime<Utc>,
) -> (NewEvent, Completed) {
    let event = event_of(command, completion);
    let result = Completed {
        event: event.clone(),
        occurred_at: now,
    };
    (event, result)
}

fn event_of(command: &Command, completion: Completion) -> NewEvent {
    NewEvent {
        tenant_id: command.tenant_id.clone(),
        name: completion.event,
        correlation_id: Some(command.correlation_id.to_string()),
        success: completion.success,
        payload: completion.payload,
    }
}

impl Outbox {
    pub fn new(db: Db, dispatch: Dispatch, config: OutboxConfig) -> Self {
        Outbox {
            db,
            dispatch,
            config,
            polls: Arc::default(),
            publish_failures: Arc::default(),
        }
    }

    pub fn config(&self) -> &OutboxConfig {
        &self.config
    }

    /// Claims made so far (each NOTIFY, timer tick or `poll_once` is one).
    pub fn polls(&self) -> u64 {
        self.polls.load(Ordering::Relaxed)
    }

    /// Returns expired leases to PENDING and claims a batch of due commands
    /// (the in-process dispatcher).
    pub async fn claim(&self) -> Result<Vec<Command>> {
        self.polls.fetch_add(1, Ordering::Relaxed);
        let now = store::now_ms();
        let mut client = self.db.write().await?;
        let released = sql::release_expired(&client, now).await?;
        if released > 0 {
            tracing::warn!(released, "returned expired outbox leases to PENDING");
        }
        let tx = client.transaction().await?;
        let claimed = sql::claim(&tx, CLAIM_BATCH, after(now, self.config.lease), now).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    /// Dispatches one claimed command in process and records the outcome.
    pub async fn process(&self, command: Command) -> Result<()> {
        let Dispatch::InProcess(dispatcher) = &self.dispatch else {
            return Ok(());
        };
        let outcome = dispatcher.dispatch(&command).await;
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
                let client = self.db.write().await?;
                sql::retry_later(&client, command.id, attempt, &error, after(now, delay), now)
                    .await?;
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
        let (event, result) = completed(command, completion, now);
        let mut client = self.db.write().await?;
        let tx = client.transaction().await?;
        let attempt = command.attempts;
        if !sql::finish(&tx, command.id, attempt, status, &result, error, now).await? {
            // Completed over HTTP meanwhile, or our lease expired and another
            // process owns the next attempt: its outcome stands.
            tracing::info!(command = %command.id, "command changed hands before this attempt finished");
            return Ok(());
        }
        events::append(&tx, &[event], now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Fails the attempts whose deadline passed (bus dispatcher): retried
    /// after the backoff, or `Command.Failed.v1` once attempts run out.
    /// Returns how many; `SKIP LOCKED` lets every process share the work.
    pub async fn expire(&self, bus: &Bus) -> Result<usize> {
        let now = store::now_ms();
        let mut client = self.db.write().await?;
        let tx = client.transaction().await?;
        let expired = sql::lock_expired(&tx, CLAIM_BATCH, now).await?;
        for command in &expired {
            let report = Report::timed_out(command.attempts);
            apply(&tx, command, &report, &self.config, now).await?;
        }
        tx.commit().await?;
        if !expired.is_empty() {
            let n = expired.len();
            bus.stats().timeouts.fetch_add(n as u64, Ordering::Relaxed);
            tracing::warn!(
                timed_out = n,
                "commands were not answered by their deadline"
            );
        }
        Ok(expired.len())
    }

    /// Publishes a batch of due commands, holding their rows until JetStream
    /// acknowledged: acknowledged ones become PROCESSING with a deadline; the
    /// others stay PENDING (not an attempt) and are retried after a backoff
    /// that grows while publishing keeps failing.
    pub async fn publish_due(&self, bus: &Bus) -> Result<usize> {
        let now = store::now_ms();
        let mut client = self.db.write().await?;
        let tx = client.transaction().await?;
        let due = sql::lock_due(&tx, CLAIM_BATCH, now).await?;
        if due.is_empty() {
            return Ok(0);
        }
        let deadline = after(now, self.config.completion_timeout);
        let sends = due.iter().map(|c| {
            let message = CommandMessage::new(c, c.attempts + 1, deadline);
            bus.publish_command(message)
        });
        let results = futures::future::join_all(sends).await;
        let (mut acked, mut failed, mut why) = (Vec::new(), Vec::new(), None);
        for (command, result) in due.iter().zip(results) {
            match result {
                Ok(()) => acked.push(command.id),
                Err(e) => {
                    failed.push(command.id);
                    why.get_or_insert(e);
                }
            }
        }
        let acked_at = store::now_ms();
        sql::mark_published(
            &tx,
            &acked,
            after(acked_at, self.config.completion_timeout),
            acked_at,
        )
        .await?;
        if let Some(why) = why {
            let streak = self.publish_failures.fetch_add(1, Ordering::Relaxed) + 1;
            let delay = backoff(&self.config, streak);
            tracing::warn!(failed = failed.len(), error = %why, ?delay, "publishing commands to NATS failed; they stay PENDING");
            let error = format!("publish failed: {why}");
            sql::defer(&tx, &failed, &error, after(acked_at, delay), acked_at).await?;
        } else {
            self.publish_failures.store(0, Ordering::Relaxed);
        }
        tx.commit().await?;
        Ok(due.len())
    }

    /// One round over the bus: deadlines first, then due commands (none
    /// while NATS is away: they wait in the outbox). Returns the larger batch.
    async fn bus_round(&self, bus: &Bus) -> Result<usize> {
        self.polls.fetch_add(1, Ordering::Relaxed);
        let expired = self.expire(bus).await?;
        if !bus.is_connected() {
            return Ok(expired);
        }
        Ok(expired.max(self.publish_due(bus).await?))
    }

    /// One synchronous round: in process, claims due commands and processes
    /// them all before returning; over the bus, publishes them.
    pub async fn poll_once(&self) -> Result<usize> {
        if let Dispatch::Bus(bus) = &self.dispatch {
            return self.bus_round(bus).await;
        }
        let claimed = self.claim().await?;
        let n = claimed.len();
        let results = futures::future::join_all(claimed.into_iter().map(|c| self.process(c))).await;
        for r in results {
            r?;
        }
        Ok(n)
    }
}

/// Wake the outbox now (a NOTIFY arrived, the listener or the bus reconnected).
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
        if let Dispatch::Bus(bus) = &outbox.dispatch {
            let bus = bus.clone();
            ctx.spawn(
                async move { outbox.bus_round(&bus).await }
                    .into_actor(self)
                    .map(|res, act, ctx| {
                        let again = act.polling.finish();
                        match res {
                            Ok(n) if n as i64 == CLAIM_BATCH || again => act.poll(ctx),
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = %e, "outbox round failed"),
                        }
                    }),
            );
            return;
        }
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
        if let Dispatch::Bus(bus) = &self.outbox.dispatch {
            // Commands that waited while NATS was away go out at once.
            let (bus, me) = (bus.clone(), ctx.address());
            ctx.spawn(
                async move {
                    loop {
                        bus.reconnected().await;
                        me.do_send(Poke);
                    }
                }
                .into_actor(self),
            );
        }
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
            completion_timeout: Duration::from_secs(300),
        };
        let got: Vec<u128> = (1..=6).map(|a| backoff(&c, a).as_millis()).collect();
        assert_eq!(got, vec![500, 1000, 2000, 3000, 3000, 3000]);
    }
}
