//! The one life cycle of scriptd's persistent actors.
//!
//! A `Registry` holds the live actors of one kind by key: get-or-start, notice
//! actors that died (a panic closes the mailbox) and start them afresh, and
//! count starts, restarts and passivations for `GET /admin/actors`.
//!
//! `Keyed<A>` is the actor every keyed kind runs as (ScriptActor, RunActor):
//! it loads what the actor keeps, queues requests and refuses what the known
//! state already refuses, runs one unit of work at a time (the kind decides
//! what a unit is: a group commit of queued requests), passivates when idle,
//! and restarts under its supervisor. A kind only says how to load, admit and
//! run: see `KeyedActor`. `Actors<A>` is the facade that asks them.
//!
//! `Singleton<A>` is the same registry for a one-per-process actor (the
//! outbox, the event hub): started, supervised, started afresh after a panic.

use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use actix::dev::ToEnvelope;
use actix::prelude::*;
use chrono::{DateTime, TimeZone, Utc};
use futures::future::BoxFuture;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::domain::{Error, ErrorCode, Result, TenantId};

/// One run at a time of an actor's background work (a fetch, a poll): a
/// request that arrives while one runs is folded into one more run after it.
#[derive(Debug, Default)]
pub struct Coalesce {
    running: bool,
    again: bool,
}

impl Coalesce {
    /// Whether to start a run now (else the request is remembered).
    pub fn start(&mut self) -> bool {
        if self.running {
            self.again = true;
            return false;
        }
        self.running = true;
        self.again = false;
        true
    }

    /// The run ended; whether another was asked for meanwhile.
    pub fn finish(&mut self) -> bool {
        self.running = false;
        std::mem::take(&mut self.again)
    }
}

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

    /// A message sent was never taken (the actor is gone).
    fn unsent(&self) {
        self.mailbox.fetch_sub(1, Ordering::Relaxed);
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
struct KindStats {
    started: AtomicU64,
    restarted: AtomicU64,
    passivated: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindCounts {
    pub live: u64,
    pub started: u64,
    pub restarted: u64,
    pub passivated: u64,
}

/// One live actor, for the admin view.
#[derive(Debug, Clone)]
pub struct ActorInfo {
    pub kind: &'static str,
    /// The id it owns (the kind's name for a one-per-process actor).
    pub key: String,
    pub tenant_id: Option<String>,
    pub mailbox: i64,
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
    stats: KindStats,
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
            meta.unsent();
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
                kind: self.kind,
                key: if s.meta.key.is_nil() {
                    self.kind.to_string()
                } else {
                    s.meta.key.to_string()
                },
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
const UNKNOWN_KEY_IDLE: Duration = Duration::from_secs(1);

/// A queued request of a keyed actor, with its reply channel inside.
pub trait Job: Send + 'static {
    /// The tenant the request is made in (another tenant's key is a 404).
    fn tenant(&self) -> &TenantId;
    /// Answers the request with `err` without running it.
    fn refuse(self, err: Error);
}

/// A load in flight: the entity's tenant and state, `None` when the key
/// names nothing.
pub type Loading<S> = BoxFuture<'static, Result<Option<(String, S)>>>;

/// What a kind of keyed actor provides; `Keyed<Self>` does the rest.
pub trait KeyedActor: Sized + Unpin + 'static {
    /// The kind's name in logs, metrics and the admin view.
    const KIND: &'static str;
    /// What the actor knows of its entity once loaded.
    type State: Send + Unpin + 'static;
    type Job: Job + Unpin;
    /// What one unit of work reports back to the actor.
    type Done: 'static;

    /// Reads the entity: its tenant and state, `None` when the key names nothing.
    fn load(&self, key: Uuid) -> Loading<Self::State>;

    /// Refuses a job that the known state already refuses (default: none).
    fn admit(_state: &Self::State, _job: &Self::Job) -> Result<()> {
        Ok(())
    }

    /// Takes the next unit of work off the queue (at least its front job,
    /// and whatever the kind commits together with it). Every earlier unit
    /// has finished and its `done` has been applied to `state`.
    fn next(
        &mut self,
        key: Uuid,
        state: &mut Self::State,
        queue: &mut Queue<Self::Job>,
    ) -> BoxFuture<'static, Self::Done>;

    /// Applies what a unit of work reported to the state.
    fn done(_state: &mut Self::State, _done: Self::Done) {}

    /// A job is refused because the queue is full (the state may remember it).
    fn refused_busy(_state: &mut Self::State, _job: &Self::Job) {}

    /// Jobs queued at most before new ones are refused as busy.
    fn queue_max(&self) -> usize {
        usize::MAX
    }
}

/// A keyed actor's queue. A job stays in the actor's mailbox count until it
/// leaves this queue (for work, or refused), so the depth shown by the admin
/// view and /metrics includes what waits for the next group commit.
pub struct Queue<J> {
    jobs: VecDeque<J>,
    meta: Arc<ActorMeta>,
}

impl<J: Job> Queue<J> {
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    pub fn front(&self) -> Option<&J> {
        self.jobs.front()
    }

    /// Takes the front job when `take` accepts it.
    pub fn pop_if(&mut self, take: impl FnOnce(&J) -> bool) -> Option<J> {
        if !take(self.jobs.front()?) {
            return None;
        }
        self.meta.received();
        self.jobs.pop_front()
    }

    pub fn pop(&mut self) -> Option<J> {
        self.pop_if(|_| true)
    }

    /// Puts jobs taken for work back at the front, in their order (a unit
    /// of work that found them not yet doable).
    pub fn push_front(&mut self, jobs: Vec<J>) {
        for job in jobs.into_iter().rev() {
            self.meta.enqueued();
            self.jobs.push_front(job);
        }
    }
}

enum Phase<S> {
    /// Not loaded yet (or the last load failed).
    Unloaded,
    Loading,
    /// Loaded: the entity's tenant and what the actor keeps of it.
    Known(String, S),
    /// The key names nothing.
    Unknown,
}

/// Why an actor stops, when it stops on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    /// Passivation after `idle` without messages.
    Idle,
    /// A failure: its supervisor restarts it and it reloads its state.
    Failure,
}

/// A keyed persistent actor of kind `A`.
pub struct Keyed<A: KeyedActor> {
    kind: A,
    key: Uuid,
    meta: Arc<ActorMeta>,
    registry: Arc<Registry<Keyed<A>>>,
    idle: Duration,
    phase: Phase<A::State>,
    queue: Queue<A::Job>,
    working: bool,
    /// `None` in `stopping` means the context is being dropped after a panic.
    stop_reason: Option<StopReason>,
}

impl<A: KeyedActor> Keyed<A> {
    fn load(&mut self, ctx: &mut Context<Self>) {
        self.phase = Phase::Loading;
        ctx.wait(
            self.kind
                .load(self.key)
                .into_actor(self)
                .map(|res, act, ctx| {
                    match res {
                        Ok(Some((tenant, state))) => {
                            act.meta.set_tenant(&tenant);
                            act.phase = Phase::Known(tenant, state);
                        }
                        Ok(None) => {
                            act.phase = Phase::Unknown;
                            act.key_unknown(ctx);
                        }
                        Err(e) => {
                            tracing::warn!(kind = A::KIND, key = %act.key, error = %e, "loading failed");
                            act.phase = Phase::Unloaded;
                            let msg = e.to_string();
                            while let Some(job) = act.queue.pop() {
                                job.refuse(Error::Unavailable(anyhow::anyhow!("{msg}")));
                            }
                        }
                    }
                    act.run(ctx);
                }),
        );
    }

    /// Refuses, at the queue's front, what the known state already refuses.
    fn refuse_front(&mut self) {
        while let Some(job) = self.queue.front() {
            let verdict = match &self.phase {
                Phase::Known(tenant, state) if tenant == job.tenant().as_str() => {
                    A::admit(state, job)
                }
                _ => Err(Error::not_found(A::KIND)),
            };
            match verdict {
                Ok(()) => return,
                Err(e) => {
                    if let Some(job) = self.queue.pop() {
                        job.refuse(e);
                    }
                }
            }
        }
    }

    /// Starts the next unit of work unless one is in flight.
    fn run(&mut self, ctx: &mut Context<Self>) {
        if self.working || self.queue.is_empty() {
            return;
        }
        match self.phase {
            Phase::Unloaded => return self.load(ctx),
            Phase::Loading => return,
            _ => {}
        }
        self.refuse_front();
        // Past `refuse_front`, jobs remain only for a known entity.
        let Phase::Known(_, state) = &mut self.phase else {
            return;
        };
        if self.queue.is_empty() {
            return;
        }
        self.working = true;
        let work = self.kind.next(self.key, state, &mut self.queue);
        ctx.spawn(work.into_actor(self).map(|done, act, ctx| {
            if let Phase::Known(_, state) = &mut act.phase {
                A::done(state, done);
            }
            act.working = false;
            act.meta.touch();
            act.run(ctx);
        }));
    }

    fn enqueue(&mut self, job: A::Job, ctx: &mut Context<Self>) {
        if self.queue.len() >= self.kind.queue_max() {
            self.meta.received();
            if let Phase::Known(_, state) = &mut self.phase {
                A::refused_busy(state, &job);
            }
            job.refuse(Error::rejected_with(
                ErrorCode::Busy,
                format!("the {}'s write queue is full; retry shortly", A::KIND),
                serde_json::json!({ "queued": self.queue.len() }),
            ));
            return;
        }
        self.queue.jobs.push_back(job);
        self.run(ctx);
    }

    /// The key names nothing (a mistyped or guessed id): passivate it soon,
    /// so that requests for random ids cannot pile up idle actors.
    fn key_unknown(&mut self, ctx: &mut Context<Self>) {
        self.idle = self.idle.min(UNKNOWN_KEY_IDLE);
        ctx.run_later(self.idle + Duration::from_millis(100), |act, ctx| {
            act.passivate_if_idle(ctx)
        });
    }

    fn passivate_if_idle(&mut self, ctx: &mut Context<Self>) {
        let busy = self.working || !self.queue.is_empty();
        let quiet = self.meta.mailbox() == 0 && self.meta.idle_ms() >= self.idle.as_millis() as i64;
        if !busy && quiet {
            self.stop_reason = Some(StopReason::Idle);
            ctx.stop();
        }
    }
}

impl<A: KeyedActor> Actor for Keyed<A> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.load(ctx);
        let every = (self.idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(30));
        ctx.run_interval(every, |act, ctx| act.passivate_if_idle(ctx));
    }

    /// Only an idle actor leaves the registry. After a failure the registry
    /// keeps its address, so the supervisor restarts it; after a panic the
    /// dead entry stays, so the registry sees the closed mailbox and counts
    /// the restart when it starts a fresh one.
    fn stopping(&mut self, _: &mut Context<Self>) -> Running {
        if self.stop_reason == Some(StopReason::Idle) {
            self.registry.remove(self.key, &self.meta);
            self.registry
                .stats
                .passivated
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(kind = A::KIND, key = %self.key, "actor passivated");
        }
        Running::Stop
    }
}

impl<A: KeyedActor> Supervised for Keyed<A> {
    /// Restarted after it stopped while messages could still reach it: count
    /// a restart (not after passivation), reload (in `started`), register again.
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        self.working = false;
        self.phase = Phase::Unloaded;
        if self.stop_reason.take() != Some(StopReason::Idle) {
            self.meta.count_restart();
            self.registry
                .stats
                .restarted
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(kind = A::KIND, key = %self.key, "actor restarted by its supervisor");
        }
        self.registry
            .reinstate(self.key, ctx.address(), self.meta.clone());
    }
}

/// A request to a keyed actor of kind `A`: how it becomes a job.
pub trait Request<A: KeyedActor>: Send + 'static {
    type Reply: Send + 'static;
    fn into_job(self, reply: oneshot::Sender<Result<Self::Reply>>) -> A::Job;
}

/// Declares a keyed kind's job enum from its requests: each variant holds a
/// request and its reply channel; `Job` (the tenant, refusal) and `Request`
/// (how the request becomes the job) follow.
#[macro_export]
macro_rules! keyed_jobs {
    ($job:ident for $actor:ty {
        $($variant:ident($req:ty) -> $reply:ty, |$r:ident| $tenant:expr;)*
    }) => {
        pub enum $job {
            $($variant($req, tokio::sync::oneshot::Sender<$crate::domain::Result<$reply>>),)*
        }

        impl $crate::keyed::Job for $job {
            fn tenant(&self) -> &$crate::domain::TenantId {
                match self {
                    $($job::$variant($r, _) => $tenant,)*
                }
            }

            fn refuse(self, err: $crate::domain::Error) {
                match self {
                    $($job::$variant(_, tx) => {
                        let _ = tx.send(Err(err));
                    })*
                }
            }
        }

        $(impl $crate::keyed::Request<$actor> for $req {
            type Reply = $reply;
            fn into_job(
                self,
                reply: tokio::sync::oneshot::Sender<$crate::domain::Result<$reply>>,
            ) -> $job {
                $job::$variant(self, reply)
            }
        })*
    };
}

/// The message that carries a request to its actor.
struct Ask<A, R>(R, PhantomData<fn() -> A>);

impl<A: KeyedActor, R: Request<A>> Message for Ask<A, R> {
    type Result = Result<R::Reply>;
}

impl<A: KeyedActor, R: Request<A>> Handler<Ask<A, R>> for Keyed<A> {
    type Result = ResponseFuture<Result<R::Reply>>;

    fn handle(&mut self, msg: Ask<A, R>, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.enqueue(msg.0.into_job(tx), ctx);
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                Err(Error::Unavailable(anyhow::anyhow!(
                    "the {} actor stopped before answering",
                    A::KIND
                )))
            })
        })
    }
}

/// Test hook: make an actor fail, by panicking (the registry starts a fresh
/// one) or by stopping with an error (its supervisor restarts it).
#[derive(Message)]
#[rtype(result = "()")]
struct InjectFailure {
    panic: bool,
}

impl<A: KeyedActor> Handler<InjectFailure> for Keyed<A> {
    type Result = ();

    fn handle(&mut self, msg: InjectFailure, ctx: &mut Context<Self>) {
        self.meta.received();
        if msg.panic {
            panic!("injected failure in {} actor {}", A::KIND, self.key);
        }
        tracing::warn!(kind = A::KIND, key = %self.key, "injected failure: stopping");
        self.stop_reason = Some(StopReason::Failure);
        ctx.stop();
    }
}

/// The actors of kind `A` in this process: the only way to reach them.
pub struct Actors<A: KeyedActor> {
    registry: Arc<Registry<Keyed<A>>>,
    make: Arc<dyn Fn() -> A + Send + Sync>,
    idle: Duration,
}

impl<A: KeyedActor> Clone for Actors<A> {
    fn clone(&self) -> Self {
        Actors {
            registry: self.registry.clone(),
            make: self.make.clone(),
            idle: self.idle,
        }
    }
}

impl<A: KeyedActor> Actors<A> {
    /// `make` builds the kind's part of a new actor (its shared handles).
    pub fn new(idle: Duration, make: impl Fn() -> A + Send + Sync + 'static) -> Self {
        Actors {
            registry: Arc::new(Registry::new(A::KIND)),
            make: Arc::new(make),
            idle,
        }
    }

    pub fn registry(&self) -> &Arc<Registry<Keyed<A>>> {
        &self.registry
    }

    fn starter(&self, key: Uuid) -> impl FnOnce(Arc<ActorMeta>) -> Addr<Keyed<A>> {
        let registry = self.registry.clone();
        let make = self.make.clone();
        let idle = self.idle;
        move |meta| {
            Supervisor::start(move |_| Keyed {
                kind: make(),
                key,
                queue: Queue {
                    jobs: VecDeque::new(),
                    meta: meta.clone(),
                },
                meta,
                registry,
                idle,
                phase: Phase::Unloaded,
                working: false,
                stop_reason: None,
            })
        }
    }

    async fn send<M>(&self, key: Uuid, msg: M) -> Result<M::Result>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        Keyed<A>: Handler<M>,
        <Keyed<A> as Actor>::Context: ToEnvelope<Keyed<A>, M>,
    {
        self.registry
            .ask(key, self.starter(key), msg)
            .await
            .map_err(|e| Error::Unavailable(anyhow::anyhow!("{} actor: {e}", A::KIND)))
    }

    /// Sends `req` to the actor that owns `key` (started on demand) and waits
    /// for its answer.
    pub async fn ask<R: Request<A>>(&self, key: Uuid, req: R) -> Result<R::Reply> {
        self.send(key, Ask(req, PhantomData)).await?
    }

    /// Test hook (see `InjectFailure`).
    pub async fn inject_failure(&self, key: Uuid, panic: bool) -> Result<()> {
        match self.send(key, InjectFailure { panic }).await {
            Ok(()) => Ok(()),
            // A panicking actor never answers: its mailbox closes.
            Err(_) if panic => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A one-per-process actor (the outbox, the event hub), supervised: it is
/// started again when its supervisor restarts it, or afresh after a panic
/// (at the next message).
pub struct Singleton<A: Actor<Context = Context<A>> + Supervised> {
    registry: Arc<Registry<A>>,
    start: Arc<dyn Fn(Arc<ActorMeta>) -> A + Send + Sync>,
}

impl<A: Actor<Context = Context<A>> + Supervised> Clone for Singleton<A> {
    fn clone(&self) -> Self {
        Singleton {
            registry: self.registry.clone(),
            start: self.start.clone(),
        }
    }
}

impl<A: Actor<Context = Context<A>> + Supervised> Singleton<A> {
    /// Starts the actor now; `start` builds it (again after a panic).
    pub fn start(
        kind: &'static str,
        start: impl Fn(Arc<ActorMeta>) -> A + Send + Sync + 'static,
    ) -> Self {
        let s = Singleton {
            registry: Arc::new(Registry::new(kind)),
            start: Arc::new(start),
        };
        s.addr();
        s
    }

    fn addr(&self) -> (Addr<A>, Arc<ActorMeta>) {
        let start = self.start.clone();
        self.registry.get_or_start(Uuid::nil(), move |meta| {
            Supervisor::start(move |_| start(meta.clone()))
        })
    }

    /// Sends without waiting (counted in the mailbox until the actor takes
    /// it). Like `Addr::do_send`, it is not bounded by the mailbox capacity, so
    /// a burst of wakes or unsubscribes is never dropped.
    pub fn do_send<M>(&self, msg: M)
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
    {
        let (addr, meta) = self.addr();
        meta.enqueued();
        addr.do_send(msg);
    }

    pub async fn send<M>(&self, msg: M) -> Result<M::Result>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
    {
        let start = self.start.clone();
        self.registry
            .ask(
                Uuid::nil(),
                move |meta| Supervisor::start(move |_| start(meta.clone())),
                msg,
            )
            .await
            .map_err(|e| Error::Unavailable(anyhow::anyhow!("{} actor: {e}", self.registry.kind)))
    }

    pub fn registry(&self) -> &Registry<A> {
        &self.registry
    }
}
