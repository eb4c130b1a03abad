//! Completions → outbox: one durable pull consumer, `completions`, shared by
//! every scriptd process, so that JetStream hands each completion to one of
//! them. Each is applied in one transaction and acknowledged after the
//! commit; a database failure leaves it unacknowledged (redelivered shortly).

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;

use super::{Bus, CompletionMessage};
use crate::service::commands::{BusOutcome, Commands};

/// The durable consumer's name on the completions stream.
pub const CONSUMER: &str = "completions";
/// Completions applied in one transaction at most.
const BATCH: usize = 256;
/// Redelivery of a completion not acknowledged in this time. Short: a
/// completion that JetStream handed to a process killed before it could ack
/// (its pull request outlives it on the server) waits this long. A batch that
/// takes longer is redelivered and then ignored as final, which is harmless.
const ACK_WAIT: Duration = Duration::from_secs(5);

/// Runs for as long as the process: consumes, and after any failure of the
/// stream (NATS away, consumer deleted) starts again a second later. At most
/// `concurrency` completions are applied at once (each holds a connection of
/// the write pool, which HTTP writes need too).
pub async fn run(bus: Bus, commands: Commands, concurrency: usize) {
    loop {
        match consume(&bus, &commands, concurrency.max(1)).await {
            Ok(()) => tracing::warn!("bus: the completions stream ended; consuming again"),
            Err(e) => {
                tracing::warn!(error = %e, "bus: consuming completions failed; retrying in 1s")
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn consumer(bus: &Bus) -> anyhow::Result<PullConsumer> {
    let stream = bus.js().get_stream(bus.completions_stream()).await?;
    let config = pull::Config {
        durable_name: Some(CONSUMER.into()),
        ack_policy: AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        max_ack_pending: 4096,
        ..Default::default()
    };
    Ok(stream.get_or_create_consumer(CONSUMER, config).await?)
}

async fn consume(bus: &Bus, commands: &Commands, concurrency: usize) -> anyhow::Result<()> {
    let messages = consumer(bus)
        .await?
        .stream()
        .max_messages_per_batch(256)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await?;
    let mut failure = None;
    messages
        .take_while(|m| {
            let ok = m.is_ok();
            if let Err(e) = m {
                failure = Some(e.to_string());
            }
            futures::future::ready(ok)
        })
        .filter_map(|m| futures::future::ready(m.ok()))
        .ready_chunks(BATCH)
        .for_each_concurrent(concurrency, |batch| handle(bus, commands, batch))
        .await;
    match failure {
        Some(e) => anyhow::bail!(e),
        None => Ok(()),
    }
}

/// The completions that arrived together: malformed ones acked at once, the
/// others applied in one transaction and acked after its commit. When that
/// transaction fails, each is tried alone, so that one cannot hold back the
/// rest; what still fails is left for redelivery.
async fn handle(bus: &Bus, commands: &Commands, batch: Vec<jetstream::Message>) {
    let mut valid = Vec::with_capacity(batch.len());
    for message in batch {
        match CompletionMessage::parse(&message.payload) {
            Ok(c) => valid.push((message, c)),
            Err(why) => {
                bus.stats().malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(subject = %message.subject, %why, "bus: malformed completion acknowledged and dropped");
                ack(&message, AckKind::Ack).await;
            }
        }
    }
    if valid.is_empty() {
        return;
    }
    let all: Vec<&CompletionMessage> = valid.iter().map(|(_, c)| c).collect();
    match commands.complete_batch(&all).await {
        Ok(outcomes) => {
            for ((message, c), outcome) in valid.iter().zip(outcomes) {
                settle(bus, message, c, outcome).await;
            }
        }
        Err(e) if valid.len() == 1 => retry_later(&valid[0].0, &valid[0].1, e).await,
        Err(_) => {
            for (message, c) in &valid {
                match commands.complete_batch(&[c]).await {
                    Ok(outcomes) => settle(bus, message, c, outcomes[0]).await,
                    Err(e) => retry_later(message, c, e).await,
                }
            }
        }
    }
}

async fn settle(
    bus: &Bus,
    message: &jetstream::Message,
    c: &CompletionMessage,
    outcome: BusOutcome,
) {
    let stats = bus.stats();
    match outcome {
        BusOutcome::Applied => stats.applied.fetch_add(1, Ordering::Relaxed),
        BusOutcome::Ignored(why) => {
            tracing::info!(command = %c.command_id, subject = %message.subject, why, "bus: completion ignored");
            stats.ignored.fetch_add(1, Ordering::Relaxed)
        }
    };
    ack(message, AckKind::Ack).await;
}

async fn retry_later(message: &jetstream::Message, c: &CompletionMessage, e: crate::Error) {
    tracing::warn!(command = %c.command_id, error = %e, "bus: applying a completion failed; it will be redelivered");
    ack(message, AckKind::Nak(Some(Duration::from_secs(1)))).await;
}

async fn ack(message: &jetstream::Message, kind: AckKind) {
    if let Err(e) = message.ack_with(kind).await {
        // Not acknowledged: redelivered after ACK_WAIT, then ignored as final.
        tracing::warn!(error = %e, "bus: acknowledging a completion failed");
    }
}
