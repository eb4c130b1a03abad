//! EventHubActor: one per process. It follows the `events` table in id order
//! (woken by NOTIFY) and routes each event to the SSE sessions of its tenant
//! (and correlation id). Each session has a bounded buffer; a session that
//! falls behind is dropped, never slowing the others.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;
use tokio::sync::mpsc;

use crate::domain::{Event, Result};
use crate::keyed::{ActorMeta, Coalesce};
use crate::store::{events as sql, Db};

const FETCH: i64 = 1000;

/// Counters for metrics and the admin view.
#[derive(Debug, Default)]
pub struct HubStats {
    pub dropped_slow: AtomicU64,
    pub fetched: AtomicU64,
}

struct Session {
    id: u64,
    correlation: Option<String>,
    tx: mpsc::Sender<Arc<Event>>,
}

/// A registered session: its live feed starts after `cursor`; events up to
/// `cursor` come from the table (replay).
pub struct Subscription {
    pub id: u64,
    pub cursor: i64,
    pub rx: mpsc::Receiver<Arc<Event>>,
}

#[derive(Message)]
#[rtype(result = "Subscription")]
pub struct Subscribe {
    pub tenant: String,
    pub correlation: Option<String>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe(pub u64);

/// New events may exist (a NOTIFY, or the listener reconnected).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Wake;

/// Drop every session (shutdown): their streams end.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseAll;

/// Open sessions per tenant.
#[derive(Message)]
#[rtype(result = "HashMap<String, usize>")]
pub struct SessionCounts;

/// Delete events past retention now (also runs on a timer).
#[derive(Message)]
#[rtype(result = "Result<u64>")]
pub struct Purge;

pub struct EventHub {
    db: Db,
    buffer: usize,
    retention: chrono::Duration,
    cursor: i64,
    sessions: HashMap<String, Vec<Session>>,
    tenant_of: HashMap<u64, String>,
    next_id: u64,
    fetching: Coalesce,
    stats: Arc<HubStats>,
    meta: Arc<ActorMeta>,
}

impl EventHub {
    pub fn new(
        db: Db,
        buffer: usize,
        retention_hours: u64,
        stats: Arc<HubStats>,
        meta: Arc<ActorMeta>,
    ) -> Self {
        EventHub {
            db,
            buffer: buffer.max(1),
            retention: chrono::Duration::hours(retention_hours as i64),
            cursor: 0,
            sessions: HashMap::new(),
            tenant_of: HashMap::new(),
            next_id: 1,
            fetching: Coalesce::default(),
            stats,
            meta,
        }
    }

    fn fetch(&mut self, ctx: &mut Context<Self>) {
        if !self.fetching.start() {
            return;
        }
        let db = self.db.clone();
        let after = self.cursor;
        // Pages of at most half a session buffer: a reader that keeps up
        // drains one page while the next is read, so a burst of events is not
        // mistaken for a reader falling behind.
        let page = self.page();
        ctx.spawn(
            async move {
                let client = db.write().await?;
                sql::after(&client, after, page).await
            }
            .into_actor(self)
            .map(|res, act, ctx| {
                let again = act.fetching.finish();
                match res {
                    Ok(events) => {
                        let full = events.len() as i64 == act.page();
                        act.stats
                            .fetched
                            .fetch_add(events.len() as u64, Ordering::Relaxed);
                        for ev in events {
                            act.cursor = act.cursor.max(ev.id);
                            act.route(Arc::new(ev));
                        }
                        if full || again {
                            act.fetch(ctx);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "event hub could not read new events; retrying");
                        ctx.run_later(Duration::from_millis(200), |act, ctx| act.fetch(ctx));
                    }
                }
            }),
        );
    }

    fn page(&self) -> i64 {
        ((self.buffer / 2).max(1) as i64).min(FETCH)
    }

    fn route(&mut self, ev: Arc<Event>) {
        let Some(list) = self.sessions.get_mut(&ev.body.tenant_id) else {
            return;
        };
        let stats = &self.stats;
        let mut dropped = Vec::new();
        for s in list.iter() {
            if s.correlation
                .as_deref()
                .is_some_and(|c| Some(c) != ev.body.correlation_id.as_deref())
            {
                continue;
            }
            match s.tx.try_send(ev.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    stats.dropped_slow.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(session = s.id, tenant = %ev.body.tenant_id, "SSE session fell behind; disconnecting it");
                    dropped.push(s.id);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => dropped.push(s.id),
            }
        }
        if !dropped.is_empty() {
            list.retain(|s| !dropped.contains(&s.id));
            for id in dropped {
                self.tenant_of.remove(&id);
            }
            if list.is_empty() {
                self.sessions.remove(&ev.body.tenant_id);
            }
        }
    }

    fn remove(&mut self, id: u64) {
        if let Some(tenant) = self.tenant_of.remove(&id) {
            if let Some(list) = self.sessions.get_mut(&tenant) {
                list.retain(|s| s.id != id);
                if list.is_empty() {
                    self.sessions.remove(&tenant);
                }
            }
        }
    }

    fn purge_future(&self) -> impl std::future::Future<Output = Result<u64>> + 'static {
        let db = self.db.clone();
        let before = Utc::now() - self.retention;
        async move {
            let client = db.write().await?;
            sql::purge(&client, before).await
        }
    }
}

impl Actor for EventHub {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Live delivery starts after the newest event at start.
        let db = self.db.clone();
        ctx.wait(
            async move {
                let client = db.write().await?;
                sql::last_id(&client).await
            }
            .into_actor(self)
            .map(|res, act, ctx| match res {
                Ok(id) => act.cursor = id,
                Err(e) => {
                    tracing::warn!(error = %e, "event hub could not read the last event id");
                    act.fetch(ctx);
                }
            }),
        );
        ctx.run_interval(Duration::from_secs(60), |act, ctx| {
            ctx.spawn(
                act.purge_future()
                    .into_actor(act)
                    .map(|res, _, _| match res {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(deleted = n, "purged events past retention"),
                        Err(e) => tracing::warn!(error = %e, "purging events failed"),
                    }),
            );
        });
    }
}

/// Supervised like the keyed actors (it never stops itself; after a panic
/// its `Singleton` starts it afresh).
impl Supervised for EventHub {}

impl Handler<Subscribe> for EventHub {
    type Result = MessageResult<Subscribe>;

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) -> Self::Result {
        self.meta.received();
        let id = self.next_id;
        self.next_id += 1;
        let (tx, rx) = mpsc::channel(self.buffer);
        self.sessions
            .entry(msg.tenant.clone())
            .or_default()
            .push(Session {
                id,
                correlation: msg.correlation,
                tx,
            });
        self.tenant_of.insert(id, msg.tenant);
        MessageResult(Subscription {
            id,
            cursor: self.cursor,
            rx,
        })
    }
}

impl Handler<Unsubscribe> for EventHub {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _: &mut Context<Self>) {
        self.meta.received();
        self.remove(msg.0);
    }
}

impl Handler<Wake> for EventHub {
    type Result = ();

    fn handle(&mut self, _: Wake, ctx: &mut Context<Self>) {
        self.meta.received();
        self.fetch(ctx);
    }
}

impl Handler<CloseAll> for EventHub {
    type Result = ();

    fn handle(&mut self, _: CloseAll, _: &mut Context<Self>) {
        self.meta.received();
        self.sessions.clear();
        self.tenant_of.clear();
    }
}

impl Handler<SessionCounts> for EventHub {
    type Result = MessageResult<SessionCounts>;

    fn handle(&mut self, _: SessionCounts, _: &mut Context<Self>) -> Self::Result {
        self.meta.received();
        MessageResult(
            self.sessions
                .iter()
                .map(|(t, list)| (t.clone(), list.len()))
                .collect(),
        )
    }
}

impl Handler<Purge> for EventHub {
    type Result = ResponseFuture<Result<u64>>;

    fn handle(&mut self, _: Purge, _: &mut Context<Self>) -> Self::Result {
        self.meta.received();
        Box::pin(self.purge_future())
    }
}
