//! The registry of keyed persistent actors: get-or-start by id, notice actors
//! that died (a panic closes the mailbox) and start them afresh, and count
//! starts, restarts and passivations for `GET /admin/actors`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use actix::dev::ToEnvelope;
use actix::{Actor, Addr, Handler, MailboxError, Message};
use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use uuid::Uuid;

/// What an actor shares with the registry about itself.
#[derive(Debug)]
pub struct ActorMeta {
    pub key: Uuid,
    tenant: OnceLock<String>,
    mailbox: AtomicI64,
    last_activity_ms: AtomicI64,
    restarts: AtomicU32,
}

impl ActorMeta {
    fn new(key: Uuid, restarts: u32) -> Self {
        ActorMeta {
            key,
            tenant: OnceLock::new(),
            mailbox: AtomicI64::new(0),
            last_activity_ms: AtomicI64::new(Utc::now().timestamp_millis()),
            restarts: AtomicU32::new(restarts),
        }
    }

    /// The meta of a one-per-process actor (outbox, event hub).
    pub fn singleton() -> Arc<Self> {
        Arc::new(ActorMeta::new(Uuid::nil(), 0))
    }

    /// A message is on its way to the actor.
    pub fn enqueued(&self) {
        self.mailbox.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_tenant(&self, tenant: &str) {
        let _ = self.tenant.set(tenant.to_string());
    }

    pub fn tenant(&self) -> Option<&str> {
        self.tenant.get().map(String::as_str)
    }

    /// A message was taken out of the mailbox (the actor counts its own depth:
    /// actix does not expose it).
    pub fn received(&self) {
        self.mailbox.fetch_sub(1, Ordering::Relaxed);
        self.touch();
    }

    pub fn touch(&self) {
        self.last_activity_ms
            .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    pub fn mailbox(&self) -> i64 {
        self.mailbox.load(Ordering::Relaxed).max(0)
    }

    pub fn idle_ms(&self) -> i64 {
        Utc::now().timestamp_millis() - self.last_activity_ms.load(Ordering::Relaxed)
    }

    pub fn last_activity(&self) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(self.last_activity_ms.load(Ordering::Relaxed))
            .single()
            .unwrap_or_else(Utc::now)
    }

    pub fn restarts(&self) -> u32 {
        self.restarts.load(Ordering::Relaxed)
    }

    pub fn count_restart(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }
}

/// Life-cycle counts of one kind of actor.
#[derive(Debug, Default)]
pub struct KindStats {
    pub started: AtomicU64,
    pub restarted: AtomicU64,
    pub passivated: AtomicU64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KindCounts {
    pub live: u64,
    pub started: u64,
    pub restarted: u64,
    pub passivated: u64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActorInfo {
    pub kind: String,
    pub key: String,
    pub tenant_id: Option<String>,
    pub mailbox: i64,
    #[serde(serialize_with = "crate::domain::ts::serialize")]
    #[schema(value_type = String, format = DateTime)]
    pub last_activity_at: DateTime<Utc>,
    pub restarts: u32,
}

struct Slot<A: Actor> {
    addr: Addr<A>,
    meta: Arc<ActorMeta>,
}

pub struct Registry<A: Actor> {
    kind: &'static str,
    slots: Mutex<HashMap<Uuid, Slot<A>>>,
    pub stats: KindStats,
}

impl<A: Actor> Registry<A> {
    pub fn new(kind: &'static str) -> Self {
        Registry {
            kind,
            slots: Mutex::new(HashMap::new()),
            stats: KindStats::default(),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Slot<A>>> {
        // A panic while holding this lock leaves the map consistent (every
        // operation is a single insert/remove), so a poisoned lock is usable.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live actor for `key`, starting one (or a fresh one after a crash).
    pub fn get_or_start(
        &self,
        key: Uuid,
        start: impl FnOnce(Arc<ActorMeta>) -> Addr<A>,
    ) -> (Addr<A>, Arc<ActorMeta>) {
        let mut slots = self.slots();
        let restarts = match slots.get(&key) {
            Some(slot) if slot.addr.connected() => return (slot.addr.clone(), slot.meta.clone()),
            // The actor died (a panic closes its mailbox): start it afresh.
            Some(slot) => {
                self.stats.restarted.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(kind = self.kind, %key, "actor died; starting it afresh");
                Some(slot.meta.restarts() + 1)
            }
            None => None,
        };
        if restarts.is_none() {
            self.stats.started.fetch_add(1, Ordering::Relaxed);
        }
        let meta = Arc::new(ActorMeta::new(key, restarts.unwrap_or(0)));
        let addr = start(meta.clone());
        slots.insert(
            key,
            Slot {
                addr: addr.clone(),
                meta: meta.clone(),
            },
        );
        (addr, meta)
    }

    /// Sends `msg` to the actor for `key` (started on demand), counting it in
    /// the actor's mailbox depth until the actor takes it.
    pub async fn ask<M>(
        &self,
        key: Uuid,
        start: impl FnOnce(Arc<ActorMeta>) -> Addr<A>,
        msg: M,
    ) -> Result<M::Result, MailboxError>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
    {
        let (addr, meta) = self.get_or_start(key, start);
        meta.enqueued();
        let res = addr.send(msg).await;
        if res.is_err() {
            meta.mailbox.fetch_sub(1, Ordering::Relaxed);
        }
        res
    }

    /// Deregisters the actor with this `meta` (it is stopping).
    pub fn remove(&self, key: Uuid, meta: &Arc<ActorMeta>) {
        let mut slots = self.slots();
        if slots.get(&key).is_some_and(|s| Arc::ptr_eq(&s.meta, meta)) {
            slots.remove(&key);
        }
    }

    /// Registers an actor that its supervisor restarted, unless another live
    /// actor took its key meanwhile.
    pub fn reinstate(&self, key: Uuid, addr: Addr<A>, meta: Arc<ActorMeta>) {
        let mut slots = self.slots();
        if !slots.get(&key).is_some_and(|s| s.addr.connected()) {
            slots.insert(key, Slot { addr, meta });
        }
    }

    /// Whether a live actor holds `key`.
    pub fn is_live(&self, key: Uuid) -> bool {
        self.slots().get(&key).is_some_and(|s| s.addr.connected())
    }

    pub fn counts(&self) -> KindCounts {
        let live = self.slots().values().filter(|s| s.addr.connected()).count() as u64;
        KindCounts {
            live,
            started: self.stats.started.load(Ordering::Relaxed),
            restarted: self.stats.restarted.load(Ordering::Relaxed),
            passivated: self.stats.passivated.load(Ordering::Relaxed),
        }
    }

    pub fn actors(&self) -> Vec<ActorInfo> {
        self.slots()
            .values()
            .filter(|s| s.addr.connected())
            .map(|s| ActorInfo {
                kind: self.kind.to_string(),
                key: s.meta.key.to_string(),
                tenant_id: s.meta.tenant().map(str::to_string),
                mailbox: s.meta.mailbox(),
                last_activity_at: s.meta.last_activity(),
                restarts: s.meta.restarts(),
            })
            .collect()
    }

    pub fn total_mailbox(&self) -> i64 {
        self.slots().values().map(|s| s.meta.mailbox()).sum()
    }
}

/// How long an actor whose key names nothing stays.
const UNKNOWN_KEY_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// Why a keyed actor stops, when it stops on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Passivation after `idle` without messages.
    Idle,
    /// A failure: its supervisor restarts it and it reloads its state.
    Failure,
}

/// The life cycle every keyed persistent actor shares: idle passivation,
/// leaving the registry, restart accounting.
pub struct Lifecycle<A: Actor> {
    pub id: Uuid,
    pub meta: Arc<ActorMeta>,
    pub registry: Arc<Registry<A>>,
    pub idle: std::time::Duration,
    /// `None` in `stopping` means the context is being dropped after a panic.
    pub stop_reason: Option<StopReason>,
}

impl<A: Actor> Lifecycle<A> {
    pub fn new(
        id: Uuid,
        meta: Arc<ActorMeta>,
        registry: Arc<Registry<A>>,
        idle: std::time::Duration,
    ) -> Self {
        Lifecycle {
            id,
            meta,
            registry,
            idle,
            stop_reason: None,
        }
    }

    /// The actor's key names nothing (a mistyped or guessed id): passivate it
    /// soon, so that requests for random ids cannot pile up idle actors.
    pub fn key_unknown(&mut self) {
        self.idle = self.idle.min(UNKNOWN_KEY_IDLE);
    }

    /// How often to look for idleness.
    pub fn check_interval(&self) -> std::time::Duration {
        (self.idle / 4).clamp(
            std::time::Duration::from_millis(50),
            std::time::Duration::from_secs(30),
        )
    }

    /// Nothing in the mailbox, and no message for `idle`.
    pub fn idle_expired(&self) -> bool {
        self.meta.mailbox() == 0 && self.meta.idle_ms() >= self.idle.as_millis() as i64
    }

    /// From `Actor::stopping`. Only an idle actor leaves the registry. After a
    /// failure the registry keeps its address, so the supervisor restarts it;
    /// after a panic the dead entry stays, so the registry sees the closed
    /// mailbox and counts the restart when it starts a fresh one.
    pub fn on_stopping(&self) {
        if self.stop_reason == Some(StopReason::Idle) {
            self.registry.remove(self.id, &self.meta);
            self.registry
                .stats
                .passivated
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(key = %self.id, "actor passivated");
        }
    }

    /// From `Supervised::restarting`: count a restart (not after passivation)
    /// and register again.
    pub fn on_restarting(&mut self, addr: Addr<A>) {
        if self.stop_reason.take() != Some(StopReason::Idle) {
            self.meta.count_restart();
            self.registry
                .stats
                .restarted
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(key = %self.id, "actor restarted by its supervisor");
        }
        self.registry.reinstate(self.id, addr, self.meta.clone());
    }
}

/// What a keyed actor provides so that its idle passivation is shared.
pub trait Passivating: Actor<Context = actix::Context<Self>> {
    fn life(&mut self) -> &mut Lifecycle<Self>;

    /// Work queued or in flight: never passivate then.
    fn busy(&self) -> bool;

    /// From `started`: look for idleness periodically.
    fn watch_idle(&mut self, ctx: &mut actix::Context<Self>) {
        use actix::AsyncContext;
        ctx.run_interval(self.life().check_interval(), |act, ctx| {
            act.passivate_if_idle(ctx)
        });
    }

    fn passivate_if_idle(&mut self, ctx: &mut actix::Context<Self>) {
        use actix::ActorContext;
        if !self.busy() && self.life().idle_expired() {
            self.life().stop_reason = Some(StopReason::Idle);
            ctx.stop();
        }
    }

    /// The key names nothing: passivate once the short idle period is over.
    fn key_unknown(&mut self, ctx: &mut actix::Context<Self>) {
        use actix::AsyncContext;
        self.life().key_unknown();
        let after = self.life().idle + std::time::Duration::from_millis(100);
        ctx.run_later(after, |act, ctx| act.passivate_if_idle(ctx));
    }
}
