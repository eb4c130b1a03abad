//! `scriptd dev-handler`: the reference handler over the bus. It consumes
//! `<prefix>.commands.>` with the durable consumer `dev-handler` and completes
//! every command like the dev worker (same delays and events) by publishing
//! to `<prefix>.completions.<command>`, acknowledging the command only once
//! JetStream acknowledged the completion.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy};
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;

use super::{Bus, CommandMessage, CompletionMessage};
use crate::domain::Report;
use crate::workers::dispatcher::DevDispatcher;

pub const CONSUMER: &str = "dev-handler";
const CONCURRENCY: usize = 256;

/// Runs until the process is stopped.
pub async fn run(bus: Bus, dev: DevDispatcher) -> anyhow::Result<()> {
    bus.wait_for_streams().await?;
    tracing::info!(stream = %bus.commands_stream(), "dev-handler: completing commands");
    let dev = Arc::new(dev);
    loop {
        if let Err(e) = consume(&bus, &dev).await {
            tracing::warn!(error = %e, "dev-handler: consuming commands failed; retrying in 1s");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn consume(bus: &Bus, dev: &DevDispatcher) -> anyhow::Result<()> {
    let stream = bus.js().get_stream(bus.commands_stream()).await?;
    let config = pull::Config {
        durable_name: Some(CONSUMER.into()),
        ack_policy: AckPolicy::Explicit,
        // A command handed to a killed dev-handler comes back this soon.
        ack_wait: Duration::from_secs(10),
        max_ack_pending: 8192,
        ..Default::default()
    };
    let messages = stream
        .get_or_create_consumer(CONSUMER, config)
        .await?
        .stream()
        .max_messages_per_batch(512)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await?;
    messages
        .take_while(|m| {
            if let Err(e) = m {
                tracing::warn!(error = %e, "dev-handler: the commands stream failed");
            }
            futures::future::ready(m.is_ok())
        })
        .filter_map(|m| futures::future::ready(m.ok()))
        .for_each_concurrent(CONCURRENCY, |m| handle(bus, dev, m))
        .await;
    Ok(())
}

async fn handle(bus: &Bus, dev: &DevDispatcher, message: jetstream::Message) {
    let command: CommandMessage = match serde_json::from_slice(&message.payload) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(subject = %message.subject, error = %e, "dev-handler: not a command; dropped");
            let _ = message.ack().await;
            return;
        }
    };
    let delay = dev.delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let c = DevDispatcher::completion_for(&command.command);
    let completion = CompletionMessage {
        command_id: command.command_id,
        tenant_id: command.tenant_id.clone(),
        report: Report {
            event: Some(c.event),
            success: c.success,
            payload: c.payload,
            error: None,
            retry: false,
            attempt: Some(command.attempt),
        },
    };
    let kind = match bus.publish_completion(&command.command, &completion).await {
        Ok(()) => AckKind::Ack,
        Err(e) => {
            tracing::warn!(command = %command.command_id, error = %e, "dev-handler: publishing the completion failed; the command will be redelivered");
            AckKind::Nak(Some(Duration::from_secs(1)))
        }
    };
    if let Err(e) = message.ack_with(kind).await {
        tracing::warn!(error = %e, "dev-handler: acknowledging a command failed");
    }
}
