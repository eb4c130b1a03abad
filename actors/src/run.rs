//! RunActor: one per run. It serializes variable upserts and finish; upserts
//! that arrive while a write is in flight are written together in the next
//! statement (group commit), last write per key winning in arrival order.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::json;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::domain::run::{run_event, run_finished};
use crate::domain::{
    Error, ErrorCode, NewEvent, Result, Run, RunStatus, RunVariable, TenantId, VarUpsert,
};
use crate::keyed::{self, KeyedActor, Loading, Queue};
use crate::store::{self, events, runs as sql, Db};
use crate::workers::appender::EventPublisher;
use crate::workers::var_writer::{VarWriter, MAX_ROWS};

type Reply<T> = oneshot::Sender<Result<T>>;

/// The answer to an upsert: the stored values of the keys it touched.
#[derive(Debug, Clone)]
pub struct Upserted {
    pub upserted: usize,
    pub vars: Vec<RunVariable>,
}

pub struct UpsertVars {
    pub tenant: TenantId,
    /// Distinct keys (the edge keeps the last item per key).
    pub items: Vec<VarUpsert>,
}

pub struct FinishRun {
    pub tenant: TenantId,
    pub status: RunStatus,
}

crate::keyed_jobs!(RunJob for RunActor {
    Upsert(UpsertVars) -> Upserted, |m| &m.tenant;
    Finish(FinishRun) -> Run, |m| &m.tenant;
});

/// What a run actor keeps of its run (reloaded at every start).
pub struct RunState {
    finished: bool,
}

/// The run kind of keyed actor, with the handles every run actor shares.
#[derive(Clone)]
pub struct RunActor {
    db: Db,
    writer: VarWriter,
    publisher: EventPublisher,
    queue_max: usize,
}

impl KeyedActor for RunActor {
    const KIND: &'static str = "run";
    type State = RunState;
    type Job = RunJob;
    /// Whether the run turned out to be finished.
    type Done = bool;

    fn load(&self, key: Uuid) -> Loading<RunState> {
        let db = self.db.clone();
        async move {
            let client = db.write().await?;
            Ok(sql::get_run(&client, key).await?.map(|r| {
                let finished = r.status != RunStatus::Running;
                (r.tenant_id, RunState { finished })
            }))
        }
        .boxed()
    }

    /// A finished run refuses without a round trip.
    fn admit(state: &RunState, _: &RunJob) -> Result<()> {
        if state.finished {
            Err(run_finished())
        } else {
            Ok(())
        }
    }

    /// The upserts at the head of the queue together (up to `MAX_ROWS`
    /// rows), or one finish.
    fn next(&mut self, key: Uuid, queue: &mut Queue<RunJob>) -> BoxFuture<'static, bool> {
        match queue.pop() {
            Some(RunJob::Upsert(m, tx)) => {
                let tenant = m.tenant.clone();
                let mut rows = m.items.len();
                let mut batch = vec![(m, tx)];
                while rows < MAX_ROWS {
                    let same = |j: &RunJob| matches!(j, RunJob::Upsert(m, _) if m.tenant == tenant);
                    match queue.pop_if(same) {
                        Some(RunJob::Upsert(m, tx)) => {
                            rows += m.items.len();
                            batch.push((m, tx));
                        }
                        _ => break,
                    }
                }
                let (writer, publisher) = (self.writer.clone(), self.publisher.clone());
                commit_upserts(writer, publisher, key, tenant.into_string(), batch).boxed()
            }
            Some(RunJob::Finish(m, tx)) => {
                let (db, publisher) = (self.db.clone(), self.publisher.clone());
                async move {
                    // The run's earlier events (queued after their upserts
                    // committed) are appended first; the finish transaction
                    // then appends Run.Finished.v1 itself, once, after them.
                    publisher.flushed().await;
                    let res = finish_run(&db, &m.tenant, key, m.status).await;
                    let finished = match &res {
                        Ok(_) => true,
                        Err(e) => e.code() == Some(ErrorCode::RunFinished),
                    };
                    let _ = tx.send(res);
                    finished
                }
                .boxed()
            }
            None => async { false }.boxed(),
        }
    }

    fn done(state: &mut RunState, finished: bool) {
        state.finished |= finished;
    }

    fn queue_max(&self) -> usize {
        self.queue_max
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
    batch: Vec<(UpsertVars, Reply<Upserted>)>,
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
    publish_written(&publisher, id, tenant, written_keys);
    finished
}

/// Appends one `Run.VarsUpserted.v1` for the keys written, off the write path:
/// queued in order behind this run's earlier events (and before its
/// Run.Finished, which the actor queues after this).
fn publish_written(
    publisher: &EventPublisher,
    id: Uuid,
    tenant: String,
    mut written_keys: Vec<String>,
) {
    if written_keys.is_empty() {
        return;
    }
    written_keys.sort();
    written_keys.dedup();
    let run_id = id.to_string();
    let event = NewEvent {
        tenant_id: tenant,
        name: "Run.VarsUpserted.v1".into(),
        correlation_id: Some(run_id.clone()),
        success: true,
        payload: json!({ "runId": run_id, "keys": written_keys }),
    };
    publisher.publish_detached(vec![event]);
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

/// Finish: status, endedAt and `Run.Finished.v1` in one transaction. The
/// run's actor calls it only after the run's earlier events are appended, so
/// the event follows them in commit order.
#[tracing::instrument(level = "debug", skip_all, fields(run = %id))]
async fn finish_run(db: &Db, tenant: &TenantId, id: Uuid, status: RunStatus) -> Result<Run> {
    let mut client = db.write().await?;
    let tx = client.transaction().await?;
    let run = sql::lock_run(&tx, id)
        .await?
        .filter(|r| r.tenant_id == tenant.as_str())
        .ok_or_else(|| Error::not_found("run"))?;
    if run.status != RunStatus::Running {
        return Err(run_finished());
    }
    let now = store::now_ms();
    let run = sql::finish_run(&tx, id, status, now).await?;
    let finished = run_event(
        &run,
        "Run.Finished.v1",
        json!({ "runId": run.id, "status": run.status.as_str() }),
    );
    events::append(&tx, &[finished], now).await?;
    tx.commit().await?;
    Ok(run)
}

/// The run actors of this process.
pub type RunActors = keyed::Actors<RunActor>;

/// Starts the registry of run actors (and the variable writer they share).
pub fn actors(
    db: Db,
    publisher: EventPublisher,
    idle: std::time::Duration,
    queue_max: usize,
    writer: VarWriter,
) -> RunActors {
    let kind = Arc::new(RunActor {
        db,
        writer,
        publisher,
        queue_max: queue_max.max(1),
    });
    keyed::Actors::new(idle, move || (*kind).clone())
}
