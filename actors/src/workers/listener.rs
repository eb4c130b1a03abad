//! The one LISTEN connection of a process: wakes the event hub and the outbox
//! on NOTIFY, and reconnects with backoff (waking both after a reconnect, in
//! case a notification was missed while it was down).

use std::time::Duration;

use tokio::sync::mpsc;

use crate::hub::{EventHub, Wake};
use crate::keyed::Singleton;
use crate::outbox::{OutboxActor, Poke};
use crate::store::notify::{self, Notice};

pub struct Targets {
    pub hub: Singleton<EventHub>,
    pub outbox: Option<Singleton<OutboxActor>>,
}

impl Targets {
    fn wake(&self, notice: Notice) {
        if notice != Notice::Outbox {
            self.hub.do_send(Wake);
        }
        if notice != Notice::Events {
            if let Some(o) = &self.outbox {
                o.do_send(Poke);
            }
        }
    }
}

/// Runs until the process ends.
pub async fn run(url: String, targets: Targets) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let outbox = targets.outbox.is_some();
    actix::spawn(async move {
        while let Some(notice) = rx.recv().await {
            targets.wake(notice);
        }
    });
    let mut backoff = Duration::from_millis(100);
    loop {
        match notify::listen_once(&url, outbox, &tx).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, ?backoff, "LISTEN connection failed; reconnecting");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
