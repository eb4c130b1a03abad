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
use crate::keyed::{self, Job, KeyedActor, Loading, Queue};
use crate::store::runs::RunWrite;
use crate::store::{self, events, runs as sql, Db};
use crate::workers::appender::EventPublisher;
use crate::workers::var_writer::{VarWriter, MAX_ROWS};

type Reply<T> = oneshot::Sender<Result<T>>;

/// The answer to an upsert: the stored values of the keys it touched (not
/// for stream frames, whose ack needs only the count).
#[derive(Debug, Clone, Default)]
pub struct Upserted {
    pub upserted: usize,
    pub vars: Vec<RunVariable>,
    /// A stream frame at or below the run's committed `seq`: not written.
    pub duplicate: bool,
}

pub struct UpsertVars {
    pub tenant: TenantId,
    /// Distinct keys (the edge keeps the last item per key).
    pub items: Vec<VarUpsert>,
    /// A runner-stream frame's `seq` (committed with its rows).
    pub seq: Option<i64>,
}

pub struct FinishRun {
    pub tenant: TenantId,
    pub status: RunStatus,
    /// A runner-stream `finish` frame's `seq`.
    pub seq: Option<i64>,
}

crate::keyed_jobs!(RunJob for RunActor {
    Upsert(UpsertVars) -> Upserted, |m| &m.tenant;
    Finish(FinishRun) -> Run, |m| &m.tenant;
});

/// What a run actor keeps of its run (reloaded at every start).
pub struct RunState {
    finished: bool,
    /// The highest stream `seq` known committed (the statement re-checks it:
    /// another process may have committed more).
    stream_seq: i64,
    /// The lowest stream `seq` refused since (a full queue, a failed write):
    /// later frames are refused too until it is sent again, so that no frame
    /// commits past a gap (its resend would then pass for a duplicate).
    gap: Option<i64>,
}

/// What one unit of work of a run actor reports.
#[derive(Debug, Default)]
pub struct RunDone {
    finished: bool,
    stream_seq: Option<i64>,
    /// The lowest stream `seq` that failed.
    failed: Option<i64>,
}

/// The run kind of keyed actor, with the handles every run actor shares.
#[derive(Clone)]
pub struct RunActor {
    db: Db,
    writer: VarWriter,
    publisher: EventPublisher,
    queue_max: usize,
}

type Batch = Vec<(UpsertVars, Reply<Upserted>)>;

impl KeyedActor for RunActor {
    const KIND: &'static str = "run";
    type State = RunState;
    type Job = RunJob;
    type Done = RunDone;

    fn load(&self, key: Uuid) -> Loading<RunState> {
        let db = self.db.clone();
        async move {
            let client = db.write().await?;
            Ok(sql::get_run(&client, key).await?.map(|r| {
                let finished = r.status != RunStatus::Running;
                let state = RunState {
                    finished,
                    stream_seq: r.stream_seq,
                    gap: None,
                };
                (r.tenant_id, state)
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

    /// Resends (a stream `seq` at or below the committed one) are answered at
    /// once: everything queued before them has committed. Then the upserts at
    /// the head of the queue together (up to `MAX_ROWS` rows, stream `seq`s
    /// growing), or one finish.
    fn next(
        &mut self,
        key: Uuid,
        state: &mut RunState,
        queue: &mut Queue<RunJob>,
    ) -> BoxFuture<'static, RunDone> {
        answer_resends_and_gaps(state, queue);
        let gap = state.gap;
        match queue.pop() {
            Some(RunJob::Upsert(m, tx)) => {
                let tenant = m.tenant.clone();
                let mut rows = m.items.len();
                let mut high = m.seq.unwrap_or(0);
                let mut batch = vec![(m, tx)];
                while rows < MAX_ROWS {
                    // A frame whose seq does not grow waits for the next round
                    // (a resend by then, or written if this batch fails).
                    // (A frame at or past a gap waits for the head check.)
                    let same = |j: &RunJob| {
                        matches!(j, RunJob::Upsert(m, _)
                            if m.tenant == tenant
                                && m.seq.is_none_or(|s| s > high && gap.is_none_or(|g| s < g)))
                    };
                    match queue.pop_if(same) {
                        Some(RunJob::Upsert(m, tx)) => {
                            rows += m.items.len();
                            high = high.max(m.seq.unwrap_or(0));
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
                    let res = finish_run(&db, &m.tenant, key, m.status, m.seq).await;
                    let done = match &res {
                        Ok(run) => RunDone {
                            finished: true,
                            stream_seq: Some(run.stream_seq),
                            failed: None,
                        },
                        Err(e) => RunDone {
                            finished: e.code() == Some(ErrorCode::RunFinished),
                            ..RunDone::default()
                        },
                    };
                    let _ = tx.send(res);
                    done
                }
                .boxed()
            }
            None => async { RunDone::default() }.boxed(),
        }
    }

    fn done(state: &mut RunState, done: RunDone) {
        state.finished |= done.finished;
        if let Some(seq) = done.stream_seq {
            state.stream_seq = state.stream_seq.max(seq);
        }
        if let Some(seq) = done.failed {
            state.gap = Some(state.gap.map_or(seq, |g| g.min(seq)));
        }
    }

    fn refused_busy(state: &mut RunState, job: &RunJob) {
        if let RunJob::Upsert(m, _) = job {
            if let Some(seq) = m.seq.filter(|s| *s > state.stream_seq) {
                state.gap = Some(state.gap.map_or(seq, |g| g.min(seq)));
            }
        }
    }

    fn queue_max(&self) -> usize {
        self.queue_max
    }
}

/// At the head of the queue: resends (a stream `seq` at or below the
/// committed one) are answered at once, everything queued before them having
/// committed; frames past a gap are refused; the gap's own `seq` sent again
/// closes it (frames below it, queued before it opened, go on as usual).
fn answer_resends_and_gaps(state: &mut RunState, queue: &mut Queue<RunJob>) {
    loop {
        let (committed, gap) = (state.stream_seq, state.gap);
        let seq_of = |j: &RunJob| match j {
            RunJob::Upsert(m, _) => m.seq,
            RunJob::Finish(..) => None,
        };
        let Some(seq) = queue.front().and_then(seq_of) else {
            return;
        };
        if seq <= committed {
            if let Some(RunJob::Upsert(_, tx)) = queue.pop() {
                let _ = tx.send(Ok(Upserted::resent()));
            }
        } else if let Some(g) = gap.filter(|g| seq > *g) {
            if let Some(job) = queue.pop() {
                job.refuse(Error::Unavailable(anyhow::anyhow!(
                    "frame {g} was refused: send it again before later frames"
                )));
            }
        } else {
            if gap == Some(seq) {
                state.gap = None;
            }
            return;
        }
    }
}

impl Upserted {
    fn resent() -> Self {
        Upserted {
            duplicate: true,
            ..Upserted::default()
        }
    }
}

/// Last write per key wins, in arrival order; and the first and last stream
/// `seq` of the batch.
fn merge(batch: &Batch) -> (Vec<VarUpsert>, Option<(i64, i64)>) {
    let mut merged: Vec<&VarUpsert> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (m, _) in batch {
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
    let mut seqs = batch.iter().filter_map(|(m, _)| m.seq);
    let first = seqs.next();
    let last = seqs.next_back().or(first);
    let seqs = first.zip(last);
    (merged.into_iter().cloned().collect(), seqs)
}

/// Hands the merged batch to the writer (one statement with the batches of
/// other runs), answers every caller after the commit, then appends one
/// `Run.VarsUpserted.v1` (off the callers' path). Frames that another
/// connection committed meanwhile are answered as resends and the rest
/// written again; a failing batch is retried request by request.
async fn commit_upserts(
    writer: VarWriter,
    publisher: EventPublisher,
    id: Uuid,
    tenant: String,
    mut batch: Batch,
) -> RunDone {
    let mut done = RunDone::default();
    let mut written_keys: Vec<String> = Vec::new();
    loop {
        let (items, seqs) = merge(&batch);
        match writer.write(id, items, seqs).await {
            Ok(RunWrite::Stored(stored)) => {
                written_keys = stored.iter().map(|v| v.key.clone()).collect();
                done.stream_seq = seqs.map(|s| s.1);
                answer_all(batch, &stored);
            }
            Ok(RunWrite::Finished) => {
                done.finished = true;
                for (_, tx) in batch {
                    let _ = tx.send(Err(run_finished()));
                }
            }
            Ok(RunWrite::Behind(committed)) => {
                done.stream_seq = Some(committed);
                let (resent, rest): (Batch, Batch) = batch
                    .into_iter()
                    .partition(|(m, _)| m.seq.is_some_and(|s| s <= committed));
                for (_, tx) in resent {
                    let _ = tx.send(Ok(Upserted::resent()));
                }
                batch = rest;
                if !batch.is_empty() {
                    continue;
                }
            }
            Err(e) if batch.len() == 1 => {
                if let Some((m, tx)) = batch.into_iter().next() {
                    done.failed = m.seq;
                    let _ = tx.send(Err(e));
                }
            }
            Err(e) => {
                tracing::warn!(run = %id, error = %e, requests = batch.len(), "group upsert failed; retrying one by one");
                retry_alone(&writer, id, batch, &mut done, &mut written_keys).await;
            }
        }
        break;
    }
    publish_written(&publisher, id, tenant, written_keys);
    done
}

/// A failed group, written request by request (each with its own `seq`).
async fn retry_alone(
    writer: &VarWriter,
    id: Uuid,
    batch: Batch,
    done: &mut RunDone,
    written_keys: &mut Vec<String>,
) {
    for (m, tx) in batch {
        if let (Some(_), Some(failed)) = (m.seq, done.failed) {
            // No frame commits past one that failed.
            let e =
                anyhow::anyhow!("frame {failed} was refused: send it again before later frames");
            let _ = tx.send(Err(Error::Unavailable(e)));
            continue;
        }
        let seqs = m.seq.map(|s| (s, s));
        let res = match writer.write_alone(id, &m.items, seqs).await {
            Ok(RunWrite::Stored(stored)) => {
                written_keys.extend(stored.iter().map(|v| v.key.clone()));
                done.stream_seq = m.seq.or(done.stream_seq);
                let by_key = by_key(&stored);
                Ok(answer(&m, &by_key))
            }
            Ok(RunWrite::Behind(committed)) => {
                done.stream_seq = Some(committed);
                Ok(Upserted::resent())
            }
            Ok(RunWrite::Finished) => {
                done.finished = true;
                Err(run_finished())
            }
            Err(e) => {
                if let Some(seq) = m.seq {
                    done.failed = Some(done.failed.map_or(seq, |f| f.min(seq)));
                }
                Err(e)
            }
        };
        let _ = tx.send(res);
    }
}

fn by_key(stored: &[RunVariable]) -> HashMap<&str, &RunVariable> {
    stored.iter().map(|v| (v.key.as_str(), v)).collect()
}

fn answer_all(batch: Batch, stored: &[RunVariable]) {
    let by_key = by_key(stored);
    for (m, tx) in batch {
        let _ = tx.send(Ok(answer(&m, &by_key)));
    }
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
    let upserted = m.items.len();
    if m.seq.is_some() {
        return Upserted {
            upserted,
            ..Upserted::default()
        };
    }
    let mut vars: Vec<RunVariable> = m
        .items
        .iter()
        .filter_map(|i| by_key.get(i.key.as_str()).map(|v| (*v).clone()))
        .collect();
    vars.sort_by(|a, b| a.key.cmp(&b.key));
    Upserted {
        upserted,
        vars,
        duplicate: false,
    }
}

/// Finish: status, endedAt and `Run.Finished.v1` in one transaction. The
/// run's actor calls it only after the run's earlier events are appended, so
/// the event follows them in commit order.
#[tracing::instrument(level = "debug", skip_all, fields(run = %id))]
async fn finish_run(
    db: &Db,
    tenant: &TenantId,
    id: Uuid,
    status: RunStatus,
    seq: Option<i64>,
) -> Result<Run> {
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
    let run = sql::finish_run(&tx, id, status, seq, now).await?;
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
