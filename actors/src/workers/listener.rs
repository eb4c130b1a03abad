//! The one LISTEN connection of a process: wakes the event hub and the outbox
//! on NOTIFY, and reconnects with backoff (waking both after a reconnect, in
//! case a notification was missed while it was down).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::hub::{EventHub, Wake};
use crate::keyed::Singleton;
use crate::outbox::{OutboxActor, Poke};
use crate::read_cache::ReadCache;
use crate::store::notify::{self, Notice};

pub struct Targets {
    pub hub: Singleton<EventHub>,
    pub outbox: Option<Singleton<OutboxActor>>,
    pub cache: Arc<ReadCache>,
}

impl Targets {
    fn wake(&self, notice: Notice) {
        let (hub, outbox) = match notice {
            Notice::Listening => {
                self.cache.resume();
                (true, true)
            }
            Notice::Events => (true, false),
            Notice::Outbox => (false, true),
            Notice::Script { id, revision } => {
                self.cache.invalidate(id, revision);
                (false, false)
            }
            // A change may go unnoticed until LISTEN is back: serve no
            // cached state meanwhile.
            Notice::Lost => {
                self.cache.suspend();
                (false, false)
            }
        };
        if hub {
            self.hub.do_send(Wake);
        }
        if let (true, Some(o)) = (outbox, &self.outbox) {
            o.do_send(Poke);
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
                let _ = tx.send(Notice::Lost);
                tracing::warn!(error = %e, ?backoff, "LISTEN connection failed; reconnecting");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
