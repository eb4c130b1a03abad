//! RunActor: one per run. It serializes variable upserts and finish; upserts
//! that arrive while a write is in flight are written together in the next
//! statement (group commit), last write per key winning in arrival order.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use deadpool_postgres::Pool;
use serde_json::json;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::domain::TenantId;
use crate::error::{Error, Result};
use crate::events::EventPublisher;
use crate::registry::{ActorMeta, Lifecycle, Passivating, Registry, StopReason};
use crate::runs::model::{Run, RunStatus, RunVariable, VarUpsert};
use crate::runs::ops::{self, run_finished};
use crate::runs::writer::{VarWriter, WriterStats};
use crate::store::runs as sql;

/// Variable rows in one batch at most.
const MAX_ROWS: usize = 5000;

/// The answer to an upsert: the stored values of the keys it touched.
#[derive(Debug, Clone)]
pub struct Upserted {
    pub upserted: usize,
    pub vars: Vec<RunVariable>,
}

#[derive(Message)]
#[rtype(result = "Result<Upserted>")]
pub struct UpsertVars {
    pub tenant: TenantId,
    /// Distinct keys (the edge keeps the last item per key).
    pub items: Vec<VarUpsert>,
}

#[derive(Message)]
#[rtype(result = "Result<Run>")]
pub struct FinishRun {
    pub tenant: TenantId,
    pub status: RunStatus,
}

/// Test hook, as for scripts.
#[derive(Message)]
#[rtype(result = "()")]
pub struct InjectFailure {
    pub panic: bool,
}

enum Pending {
    Upsert(UpsertVars, oneshot::Sender<Result<Upserted>>),
    Finish(FinishRun, oneshot::Sender<Result<Run>>),
}

/// What the actor knows of its run (reloaded from PostgreSQL at every start).
#[derive(Debug, Clone)]
struct Known {
    tenant: String,
    finished: bool,
}

pub struct RunActor {
    pool: Pool,
    writer: VarWriter,
    publisher: EventPublisher,
    life: Lifecycle<RunActor>,
    queue_max: usize,
    queue: VecDeque<Pending>,
    flushing: bool,
    known: Option<Known>,
    loaded: bool,
}

impl RunActor {
    fn load(&mut self, ctx: &mut Context<Self>) {
        self.loaded = false;
        let pool = self.pool.clone();
        let id = self.life.id;
        ctx.wait(
            async move {
                let client = pool.get().await?;
                sql::get_run(&client, id).await
            }
            .into_actor(self)
            .map(|res, act, ctx| {
                match res {
                    Ok(run) => {
                        if run.is_none() {
                            act.key_unknown(ctx);
                        }
                        act.known = run.map(|r| {
                            act.life.meta.set_tenant(&r.tenant_id);
                            Known {
                                tenant: r.tenant_id,
                                finished: r.status != RunStatus::Running,
                            }
                        });
                        act.loaded = true;
                    }
                    // Not loaded: the next message tries again.
                    Err(e) => {
                        tracing::warn!(run = %act.life.id, error = %e, "loading the run failed")
                    }
                }
                act.flush(ctx);
            }),
        );
    }

    /// Checks a message against what the actor knows: unknown run or another
    /// tenant's is 404, a finished run 409.
    fn admit(&self, tenant: &TenantId) -> Result<()> {
        match &self.known {
            Some(k) if k.tenant == tenant.as_str() => {
                if k.finished {
                    Err(run_finished())
                } else {
                    Ok(())
                }
            }
            _ => Err(Error::not_found("run")),
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.flushing || self.queue.is_empty() {
            return;
        }
        if !self.loaded {
            self.load(ctx);
            return;
        }
        // Refuse what the known state already refuses, without a round trip.
        while let Some(front) = self.queue.front() {
            let verdict = match front {
                Pending::Upsert(m, _) => self.admit(&m.tenant),
                Pending::Finish(m, _) => self.admit(&m.tenant),
            };
            match (verdict, self.queue.pop_front()) {
                (Ok(()), Some(item)) => {
                    self.queue.push_front(item);
                    break;
                }
                (Err(e), Some(Pending::Upsert(_, tx))) => {
                    self.life.meta.received();
                    let _ = tx.send(Err(e));
                }
                (Err(e), Some(Pending::Finish(_, tx))) => {
                    self.life.meta.received();
                    let _ = tx.send(Err(e));
                }
                (_, None) => break,
            }
        }
        let Some(first) = self.queue.pop_front() else {
            return;
        };
        self.life.meta.received();
        self.flushing = true;
        let id = self.life.id;
        match first {
            Pending::Upsert(m, tx) => {
                let mut batch = vec![(m, tx)];
                let mut rows = batch[0].0.items.len();
                while rows < MAX_ROWS {
                    match self.queue.pop_front() {
                        Some(Pending::Upsert(m, tx)) if self.admit(&m.tenant).is_ok() => {
                            self.life.meta.received();
                            rows += m.items.len();
                            batch.push((m, tx));
                        }
                        Some(other) => {
                            self.queue.push_front(other);
                            break;
                        }
                        None => break,
                    }
                }
                let publisher = self.publisher.clone();
                let writer = self.writer.clone();
                let tenant = self
                    .known
                    .as_ref()
                    .map(|k| k.tenant.clone())
                    .unwrap_or_default();
                ctx.spawn(
                    commit_upserts(writer, publisher, id, tenant, batch)
                        .into_actor(self)
                        .map(|finished, act, ctx| {
                            if finished {
                                if let Some(k) = act.known.as_mut() {
                                    k.finished = true;
                                }
                            }
                            act.done(ctx)
                        }),
                );
            }
            Pending::Finish(m, tx) => {
                let pool = self.pool.clone();
                let publisher = self.publisher.clone();
                ctx.spawn(
                    async move {
                        // The run's earlier events (queued after their upserts
                        // committed) are appended first; the finish transaction
                        // then appends Run.Finished.v1 itself, once, after them.
                        publisher.flushed().await;
                        let res = ops::finish_run(&pool, &m.tenant, id, m.status).await;
                        let finished = res.is_ok()
                            || matches!(&res, Err(Error::Rejected { code, .. }) if *code == crate::ErrorCode::RunFinished);
                        let _ = tx.send(res);
                        finished
                    }
                    .into_actor(self)
                    .map(|finished, act, ctx| {
                        if finished {
                            if let Some(k) = act.known.as_mut() {
                                k.finished = true;
                            }
                        }
                        act.done(ctx)
                    }),
                );
            }
        }
    }

    fn done(&mut self, ctx: &mut Context<Self>) {
        self.flushing = false;
        self.life.meta.touch();
        self.flush(ctx);
    }

    /// Queues a message. It leaves the actor's mailbox count only when it
    /// leaves this queue (for a write, or refused), so the depth shown by
    /// /admin/actors and /metrics includes the upserts waiting for the next
    /// batch.
    fn enqueue(&mut self, item: Pending, ctx: &mut Context<Self>) {
        let upserts = self.queue.len();
        if upserts >= self.queue_max {
            self.life.meta.received();
            let busy = Error::rejected_with(
                crate::ErrorCode::Unavailable,
                "the run's write queue is full; retry shortly",
                json!({ "queued": upserts }),
            );
            match item {
                Pending::Upsert(_, tx) => {
                    let _ = tx.send(Err(busy));
                }
                Pending::Finish(_, tx) => {
                    let _ = tx.send(Err(busy));
                }
            }
            return;
        }
        self.queue.push_back(item);
        self.flush(ctx);
    }
}

/// Merges the batch (last write per key wins, in arrival order), hands it to
/// the writer (one statement with the batches of other runs), answers every
/// caller after the commit, then appends one `Run.VarsUpserted.v1` (off the
/// callers' path). A failing batch is retried request by request. Returns
/// true when the run turned out to be finished.
async fn commit_upserts(
    writer: VarWriter,
    publisher: EventPublisher,
    id: Uuid,
    tenant: String,
    batch: Vec<(UpsertVars, oneshot::Sender<Result<Upserted>>)>,
) -> bool {
    let mut merged: Vec<&VarUpsert> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (m, _) in &batch {
        for item in &m.items {
            match index.get(item.key.as_str()) {
                Some(&i) => merged[i] = item,
                None => {
                    index.insert(item.key.as_str(), merged.len());
                    merged.push(item);
                }
            }
        }
    }
    let outcome = writer
        .write(id, merged.into_iter().cloned().collect())
        .await;
    let mut written_keys: Vec<String> = Vec::new();
    let mut finished = false;
    match outcome {
        Ok(Some(stored)) => {
            let by_key: HashMap<&str, &RunVariable> =
                stored.iter().map(|v| (v.key.as_str(), v)).collect();
            written_keys = stored.iter().map(|v| v.key.clone()).collect();
            for (m, tx) in batch {
                let _ = tx.send(Ok(answer(&m, &by_key)));
            }
        }
        Ok(None) => {
            finished = true;
            for (_, tx) in batch {
                let _ = tx.send(Err(run_finished()));
            }
        }
        Err(e) if batch.len() == 1 => {
            if let Some((_, tx)) = batch.into_iter().next() {
                let _ = tx.send(Err(e));
            }
        }
        Err(e) => {
            tracing::warn!(run = %id, error = %e, requests = batch.len(), "group upsert failed; retrying one by one");
            for (m, tx) in batch {
                let res = match writer.write_alone(id, &m.items).await {
                    Ok(Some(stored)) => {
                        written_keys.extend(stored.iter().map(|v| v.key.clone()));
                        let by_key: HashMap<&str, &RunVariable> =
                            stored.iter().map(|v| (v.key.as_str(), v)).collect();
                        Ok(answer(&m, &by_key))
                    }
                    Ok(None) => {
                        finished = true;
                        Err(run_finished())
                    }
                    Err(e) => Err(e),
                };
                let _ = tx.send(res);
            }
        }
    }
    if !written_keys.is_empty() {
        written_keys.sort();
        written_keys.dedup();
        let run_id = id.to_string();
        let event = crate::events::NewEvent {
            tenant_id: tenant,
            name: "Run.VarsUpserted.v1".into(),
            correlation_id: Some(run_id.clone()),
            success: true,
            payload: json!({ "runId": run_id, "keys": written_keys }),
        };
        // Off the write path: queued in order behind this run's earlier events
        // (and before its Run.Finished, which the actor queues after this).
        publisher.publish_detached(vec![event]);
    }
    finished
}

fn answer(m: &UpsertVars, by_key: &HashMap<&str, &RunVariable>) -> Upserted {
    let mut vars: Vec<RunVariable> = m
        .items
        .iter()
        .filter_map(|i| by_key.get(i.key.as_str()).map(|v| (*v).clone()))
        .collect();
    vars.sort_by(|a, b| a.key.cmp(&b.key));
    Upserted {
        upserted: m.items.len(),
        vars,
    }
}

impl Passivating for RunActor {
    fn life(&mut self) -> &mut Lifecycle<Self> {
        &mut self.life
    }

    fn busy(&self) -> bool {
        !self.queue.is_empty() || self.flushing
    }
}

impl Actor for RunActor {
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

impl Supervised for RunActor {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        self.flushing = false;
        self.known = None;
        self.loaded = false;
        self.life.on_restarting(ctx.address());
    }
}

impl Handler<UpsertVars> for RunActor {
    type Result = ResponseFuture<Result<Upserted>>;

    fn handle(&mut self, msg: UpsertVars, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.enqueue(Pending::Upsert(msg, tx), ctx);
        Box::pin(async move { rx.await.unwrap_or_else(|_| Err(stopped())) })
    }
}

impl Handler<FinishRun> for RunActor {
    type Result = ResponseFuture<Result<Run>>;

    fn handle(&mut self, msg: FinishRun, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.enqueue(Pending::Finish(msg, tx), ctx);
        Box::pin(async move { rx.await.unwrap_or_else(|_| Err(stopped())) })
    }
}

impl Handler<InjectFailure> for RunActor {
    type Result = ();

    fn handle(&mut self, msg: InjectFailure, ctx: &mut Context<Self>) {
        self.life.meta.received();
        if msg.panic {
            panic!("injected failure in run actor {}", self.life.id);
        }
        self.life.stop_reason = Some(StopReason::Failure);
        ctx.stop();
    }
}

fn stopped() -> Error {
    Error::Unavailable(anyhow::anyhow!("the run actor stopped before answering"))
}

/// The run actors of this process.
pub struct Runs {
    registry: Arc<Registry<RunActor>>,
    pool: Pool,
    writer: VarWriter,
    publisher: EventPublisher,
    idle: Duration,
    queue_max: usize,
}

impl Runs {
    pub fn new(
        pool: Pool,
        publisher: EventPublisher,
        idle: Duration,
        queue_max: usize,
        write_statements: usize,
    ) -> Self {
        Runs {
            registry: Arc::new(Registry::new("run")),
            writer: VarWriter::start(pool.clone(), write_statements),
            pool,
            publisher,
            idle,
            queue_max: queue_max.max(1),
        }
    }

    pub fn registry(&self) -> &Arc<Registry<RunActor>> {
        &self.registry
    }

    pub fn writer_stats(&self) -> &WriterStats {
        self.writer.stats()
    }

    fn starter(&self, id: Uuid) -> impl FnOnce(Arc<ActorMeta>) -> Addr<RunActor> {
        let pool = self.pool.clone();
        let writer = self.writer.clone();
        let publisher = self.publisher.clone();
        let registry = self.registry.clone();
        let idle = self.idle;
        let queue_max = self.queue_max;
        move |meta| {
            Supervisor::start(move |_| RunActor {
                pool,
                writer,
                publisher,
                life: Lifecycle::new(id, meta, registry, idle),
                queue_max,
                queue: VecDeque::new(),
                flushing: false,
                known: None,
                loaded: false,
            })
        }
    }

    async fn ask<M>(&self, id: Uuid, msg: M) -> Result<M::Result>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        RunActor: Handler<M>,
    {
        self.registry
            .ask(id, self.starter(id), msg)
            .await
            .map_err(|e| Error::Unavailable(anyhow::anyhow!("run actor: {e}")))
    }

    pub async fn upsert(
        &self,
        id: Uuid,
        tenant: TenantId,
        items: Vec<VarUpsert>,
    ) -> Result<Upserted> {
        self.ask(id, UpsertVars { tenant, items }).await?
    }

    pub async fn finish(&self, id: Uuid, tenant: TenantId, status: RunStatus) -> Result<Run> {
        self.ask(id, FinishRun { tenant, status }).await?
    }

    /// Test hook (see `InjectFailure`).
    pub async fn inject_failure(&self, id: Uuid, panic: bool) -> Result<()> {
        match self.ask(id, InjectFailure { panic }).await {
            Ok(()) => Ok(()),
            Err(_) if panic => Ok(()),
            Err(e) => Err(e),
        }
    }
}
