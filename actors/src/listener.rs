//! The one LISTEN connection of a process: wakes the event hub and the outbox
//! on NOTIFY, and reconnects with backoff (waking both after a reconnect, in
//! case a notification was missed while it was down).

use std::time::Duration;

use actix::Recipient;
use futures::StreamExt;
use tokio_postgres::AsyncMessage;

use crate::events::hub::Wake;
use crate::outbox::actor::Poke;
use crate::store::{commands::OUTBOX_CHANNEL, events::EVENTS_CHANNEL};

pub struct Targets {
    pub hub: Recipient<Wake>,
    pub outbox: Option<Recipient<Poke>>,
}

/// Runs until the process ends.
pub async fn run(url: String, targets: Targets) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match listen_once(&url, &targets).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(error = %e, ?backoff, "LISTEN connection failed; reconnecting");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn listen_once(url: &str, targets: &Targets) -> anyhow::Result<()> {
    let (client, mut connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(msg) = messages.next().await {
            match msg {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.channel().to_string()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN connection error");
                    break;
                }
            }
        }
    });
    let mut listen = format!("LISTEN {EVENTS_CHANNEL};");
    if targets.outbox.is_some() {
        listen.push_str(&format!(" LISTEN {OUTBOX_CHANNEL};"));
    }
    client.batch_execute(&listen).await?;
    tracing::info!("listening for notifications");
    // Anything that happened while we were not listening.
    targets.hub.do_send(Wake);
    if let Some(o) = &targets.outbox {
        o.do_send(Poke);
    }
    while let Some(channel) = rx.recv().await {
        if channel == EVENTS_CHANNEL {
            targets.hub.do_send(Wake);
        } else if let Some(o) = targets
            .outbox
            .as_ref()
            .filter(|_| channel == OUTBOX_CHANNEL)
        {
            o.do_send(Poke);
        }
    }
    driver.abort();
    drop(client);
    anyhow::bail!("the LISTEN connection closed")
}
