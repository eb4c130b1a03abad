//! ScriptActor: one per script id. It serializes every mutation of its script
//! (PATCH, version create, publish) and commits queued version creates
//! together (group commit).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use deadpool_postgres::Pool;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::registry::{ActorMeta, Lifecycle, Passivating, Registry, StopReason};
use crate::scripts::model::{ScriptView, Version};
use crate::scripts::ops::{self, PatchRequest, PublishRequest, VersionRequest};
use crate::store::scripts as sql;

/// Version creates committed in one transaction at most.
const MAX_GROUP: usize = 64;

#[derive(Message)]
#[rtype(result = "Result<Version>")]
pub struct CreateVersion(pub VersionRequest);

#[derive(Message)]
#[rtype(result = "Result<ScriptView>")]
pub struct PatchScript(pub PatchRequest);

#[derive(Message)]
#[rtype(result = "Result<ScriptView>")]
pub struct PublishVersion(pub PublishRequest);

/// Test hook: make the actor fail, by panicking (the registry starts a fresh
/// one) or by stopping with an error (its supervisor restarts it).
#[derive(Message)]
#[rtype(result = "()")]
pub struct InjectFailure {
    pub panic: bool,
}

enum Pending {
    Create(VersionRequest, oneshot::Sender<Result<Version>>),
    Patch(PatchRequest, oneshot::Sender<Result<ScriptView>>),
    Publish(PublishRequest, oneshot::Sender<Result<ScriptView>>),
}

pub struct ScriptActor {
    pool: Pool,
    life: Lifecycle<ScriptActor>,
    queue: VecDeque<Pending>,
    flushing: bool,
}

impl ScriptActor {
    pub fn new(
        id: Uuid,
        pool: Pool,
        meta: Arc<ActorMeta>,
        registry: Arc<Registry<ScriptActor>>,
        idle: Duration,
    ) -> Self {
        ScriptActor {
            pool,
            life: Lifecycle::new(id, meta, registry, idle),
            queue: VecDeque::new(),
            flushing: false,
        }
    }

    /// Loads what the actor keeps of its script: the tenant, for the admin view.
    /// The rows themselves are re-read under a row lock by every mutation.
    fn load(&mut self, ctx: &mut Context<Self>) {
        let pool = self.pool.clone();
        let id = self.life.id;
        let meta = self.life.meta.clone();
        ctx.wait(
            async move {
                let client = pool.get().await.map_err(Error::from)?;
                let script = sql::load_script(&client, id).await?;
                if let Some(s) = &script {
                    meta.set_tenant(&s.tenant_id);
                }
                Ok::<_, Error>(script.is_some())
            }
            .into_actor(self)
            .map(|res, act, ctx| match res {
                Ok(true) => {}
                Ok(false) => act.key_unknown(ctx),
                // Not fatal: every mutation reads the row again.
                Err(e) => {
                    tracing::warn!(script = %act.life.id, error = %e, "loading the script failed")
                }
            }),
        );
    }

    fn enqueue(&mut self, item: Pending, ctx: &mut Context<Self>) {
        self.life.meta.received();
        self.queue.push_back(item);
        self.flush(ctx);
    }

    /// Starts the next transaction unless one is in flight: all queued version
    /// creates at the head of the queue together, or one PATCH/publish.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.flushing || self.queue.is_empty() {
            return;
        }
        self.flushing = true;
        let pool = self.pool.clone();
        let id = self.life.id;
        let fut: std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> =
            match self.queue.pop_front() {
                Some(Pending::Create(first, tx)) => {
                    let mut batch = vec![(first, tx)];
                    while batch.len() < MAX_GROUP {
                        match self.queue.pop_front() {
                            Some(Pending::Create(r, tx)) => batch.push((r, tx)),
                            Some(other) => {
                                self.queue.push_front(other);
                                break;
                            }
                            None => break,
                        }
                    }
                    Box::pin(commit_versions(pool, id, batch))
                }
                Some(Pending::Patch(req, tx)) => Box::pin(async move {
                    let _ = tx.send(ops::patch_script(&pool, id, &req).await);
                }),
                Some(Pending::Publish(req, tx)) => Box::pin(async move {
                    let _ = tx.send(ops::publish(&pool, id, &req).await);
                }),
                None => Box::pin(async {}),
            };
        ctx.spawn(fut.into_actor(self).map(|(), act, ctx| {
            act.flushing = false;
            act.life.meta.touch();
            act.flush(ctx);
        }));
    }
}

/// Commits a group of version creates; if the group transaction fails, each
/// request is retried alone so that one bad request cannot fail the others.
async fn commit_versions(
    pool: Pool,
    id: Uuid,
    batch: Vec<(VersionRequest, oneshot::Sender<Result<Version>>)>,
) {
    let (requests, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
    match ops::create_versions(&pool, id, &requests).await {
        Ok((outcomes, _)) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(outcome);
            }
        }
        Err(e) if requests.len() == 1 => {
            if let Some(reply) = replies.into_iter().next() {
                let _ = reply.send(Err(e));
            }
        }
        Err(e) => {
            tracing::warn!(script = %id, error = %e, size = requests.len(), "group commit failed; retrying one by one");
            for (req, reply) in requests.iter().zip(replies) {
                let outcome = ops::create_versions(&pool, id, std::slice::from_ref(req))
                    .await
                    .and_then(|(mut o, _)| {
                        o.pop().unwrap_or_else(|| Err(Error::not_found("script")))
                    });
                let _ = reply.send(outcome);
            }
        }
    }
}

impl Passivating for ScriptActor {
    fn life(&mut self) -> &mut Lifecycle<Self> {
        &mut self.life
    }

    fn busy(&self) -> bool {
        !self.queue.is_empty() || self.flushing
    }
}

impl Actor for ScriptActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.load(ctx);
        self.watch_idle(ctx);
    }

    fn stopping(&mut self, _: &mut Context<Self>) -> Running {
        self.life.on_stopping();
        Running::Stop
    }
}

impl Supervised for ScriptActor {
    /// Restarted after it stopped while messages could still reach it: reload
    /// from PostgreSQL (in `started`) and register again.
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        self.flushing = false;
        self.life.on_restarting(ctx.address());
    }
}

impl Handler<CreateVersion> for ScriptActor {
    type Result = ResponseFuture<Result<Version>>;

    fn handle(&mut self, msg: CreateVersion, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.enqueue(Pending::Create(msg.0, tx), ctx);
        Box::pin(async move { rx.await.unwrap_or_else(|_| Err(stopped())) })
    }
}

impl Handler<PatchScript> for ScriptActor {
    type Result = ResponseFuture<Result<ScriptView>>;

    fn handle(&mut self, msg: PatchScript, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.enqueue(Pending::Patch(msg.0, tx), ctx);
        Box::pin(async move { rx.await.unwrap_or_else(|_| Err(stopped())) })
    }
}

impl Handler<PublishVersion> for ScriptActor {
    type Result = ResponseFuture<Result<ScriptView>>;

    fn handle(&mut self, msg: PublishVersion, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.enqueue(Pending::Publish(msg.0, tx), ctx);
        Box::pin(async move { rx.await.unwrap_or_else(|_| Err(stopped())) })
    }
}

impl Handler<InjectFailure> for ScriptActor {
    type Result = ();

    fn handle(&mut self, msg: InjectFailure, ctx: &mut Context<Self>) {
        self.life.meta.received();
        if msg.panic {
            panic!("injected failure in script actor {}", self.life.id);
        }
        tracing::warn!(script = %self.life.id, "injected failure: stopping");
        self.life.stop_reason = Some(StopReason::Failure);
        ctx.stop();
    }
}

fn stopped() -> Error {
    Error::Unavailable(anyhow::anyhow!("the script actor stopped before answering"))
}

/// The script actors of this process.
pub struct Scripts {
    registry: Arc<Registry<ScriptActor>>,
    pool: Pool,
    idle: Duration,
}

impl Scripts {
    pub fn new(pool: Pool, idle: Duration) -> Self {
        Scripts {
            registry: Arc::new(Registry::new("script")),
            pool,
            idle,
        }
    }

    pub fn registry(&self) -> &Arc<Registry<ScriptActor>> {
        &self.registry
    }

    fn starter(&self, id: Uuid) -> impl FnOnce(Arc<ActorMeta>) -> Addr<ScriptActor> {
        let pool = self.pool.clone();
        let registry = self.registry.clone();
        let idle = self.idle;
        move |meta| Supervisor::start(move |_| ScriptActor::new(id, pool, meta, registry, idle))
    }

    async fn ask<M>(&self, id: Uuid, msg: M) -> Result<M::Result>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        ScriptActor: Handler<M>,
    {
        self.registry
            .ask(id, self.starter(id), msg)
            .await
            .map_err(|e| Error::Unavailable(anyhow::anyhow!("script actor: {e}")))
    }

    pub async fn create_version(&self, id: Uuid, req: VersionRequest) -> Result<Version> {
        self.ask(id, CreateVersion(req)).await?
    }

    pub async fn patch(&self, id: Uuid, req: PatchRequest) -> Result<ScriptView> {
        self.ask(id, PatchScript(req)).await?
    }

    pub async fn publish(&self, id: Uuid, req: PublishRequest) -> Result<ScriptView> {
        self.ask(id, PublishVersion(req)).await?
    }

    /// Test hook (see `InjectFailure`).
    pub async fn inject_failure(&self, id: Uuid, panic: bool) -> Result<()> {
        match self.ask(id, InjectFailure { panic }).await {
            Ok(()) => Ok(()),
            // A panicking actor never answers: its mailbox closes.
            Err(_) if panic => Ok(()),
            Err(e) => Err(e),
        }
    }
}
