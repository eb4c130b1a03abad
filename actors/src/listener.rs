//! The one LISTEN connection of a process: wakes the event hub and the outbox
//! on NOTIFY, and reconnects with backoff (waking both after a reconnect, in
//! case a notification was missed while it was down).

use std::sync::Arc;
use std::time::Duration;

use actix::Recipient;
use futures::StreamExt;
use tokio_postgres::AsyncMessage;

use crate::events::hub::Wake;
use crate::outbox::actor::Poke;
use crate::registry::ActorMeta;
use crate::store::{commands::OUTBOX_CHANNEL, events::EVENTS_CHANNEL};

pub struct Targets {
    pub hub: Recipient<Wake>,
    pub hub_meta: Arc<ActorMeta>,
    pub outbox: Option<(Recipient<Poke>, Arc<ActorMeta>)>,
}

impl Targets {
    fn wake_hub(&self) {
        self.hub_meta.enqueued();
        self.hub.do_send(Wake);
    }

    fn poke_outbox(&self) {
        if let Some((o, meta)) = &self.outbox {
            meta.enqueued();
            o.do_send(Poke);
        }
    }
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
    targets.wake_hub();
    targets.poke_outbox();
    while let Some(channel) = rx.recv().await {
        if channel == EVENTS_CHANNEL {
            targets.wake_hub();
        } else if channel == OUTBOX_CHANNEL {
            targets.poke_outbox();
        }
    }
    driver.abort();
    drop(client);
    anyhow::bail!("the LISTEN connection closed")
}
