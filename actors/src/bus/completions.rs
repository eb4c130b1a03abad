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
/// Completions applied at once by one process.
const CONCURRENCY: usize = 64;
/// Redelivery of a completion not acknowledged in this time.
const ACK_WAIT: Duration = Duration::from_secs(30);

/// Runs for as long as the process: consumes, and after any failure of the
/// stream (NATS away, consumer deleted) starts again a second later.
pub async fn run(bus: Bus, commands: Commands) {
    loop {
        match consume(&bus, &commands).await {
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

async fn consume(bus: &Bus, commands: &Commands) -> anyhow::Result<()> {
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
        .for_each_concurrent(CONCURRENCY, |m| handle(bus, commands, m))
        .await;
    match failure {
        Some(e) => anyhow::bail!(e),
        None => Ok(()),
    }
}

async fn handle(bus: &Bus, commands: &Commands, message: jetstream::Message) {
    let stats = bus.stats();
    let completion = match CompletionMessage::parse(&message.payload) {
        Ok(c) => c,
        Err(why) => {
            stats.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(subject = %message.subject, %why, "bus: malformed completion acknowledged and dropped");
            ack(&message, AckKind::Ack).await;
            return;
        }
    };
    let id = completion.command_id;
    match commands
        .complete_by_id(id, &completion.tenant_id, &completion.report)
        .await
    {
        Ok(BusOutcome::Applied) => {
            stats.applied.fetch_add(1, Ordering::Relaxed);
            ack(&message, AckKind::Ack).await;
        }
        Ok(BusOutcome::Ignored(why)) => {
            stats.ignored.fetch_add(1, Ordering::Relaxed);
            tracing::info!(command = %id, subject = %message.subject, why, "bus: completion ignored");
            ack(&message, AckKind::Ack).await;
        }
        Err(e) => {
            tracing::warn!(command = %id, error = %e, "bus: applying a completion failed; it will be redelivered");
            ack(&message, AckKind::Nak(Some(Duration::from_secs(1)))).await;
        }
    }
}

async fn ack(message: &jetstream::Message, kind: AckKind) {
    if let Err(e) = message.ack_with(kind).await {
        // Not acknowledged: redelivered after ACK_WAIT, then ignored as final.
        tracing::warn!(error = %e, "bus: acknowledging a completion failed");
    }
}
