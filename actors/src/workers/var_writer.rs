//! VarWriter: the second level of the run variables' group commit.
//!
//! Each RunActor merges the upserts queued on its run into one batch and has at
//! most one batch in flight. The writer takes the batches of ALL runs that are
//! waiting while its statements are in flight and writes them together: one
//! statement and one commit for many runs. (With one statement per run, the
//! per-statement and per-commit work of PostgreSQL dominated the hot write
//! path: see BENCHMARKS.md, "vars".) The answer goes back to the run's actor,
//! which answers its callers; a failed group is retried run by run, so one
//! run's bad batch fails no other run.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};
use uuid::Uuid;

use crate::domain::{Error, Result, VarUpsert};
use crate::store::runs::{RunBatch, RunWrite};
use crate::store::{self, runs as sql, Db};

/// Variable rows written in one statement at most (a request holds up to
/// 500); a run actor's batch is bounded by it too.
pub const MAX_ROWS: usize = 5000;

/// What became of one run's batch.
pub type Written = Result<RunWrite>;

struct Job {
    run_id: Uuid,
    items: Vec<VarUpsert>,
    /// The first and last stream `seq` of the frames in the batch.
    seqs: Option<(i64, i64)>,
    reply: oneshot::Sender<Written>,
}

impl Job {
    fn batch(&self) -> RunBatch<'_> {
        RunBatch {
            run: self.run_id,
            items: &self.items,
            seqs: self.seqs,
        }
    }
}

/// What the writer has done, for /metrics.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Run batches waiting for a statement.
    pub queued: AtomicU64,
    /// Statements run (groups, single runs and retries).
    pub statements: AtomicU64,
    /// Variable rows sent in those statements.
    pub rows: AtomicU64,
    /// Groups that failed and were retried run by run.
    pub group_retries: AtomicU64,
}

/// What the writer task and its handles share.
struct Shared {
    db: Db,
    stats: WriterStats,
}

/// Handle to the process's writer task (cheap to clone).
#[derive(Clone)]
pub struct VarWriter {
    tx: mpsc::UnboundedSender<Job>,
    shared: Arc<Shared>,
}

impl VarWriter {
    /// Starts the writer on the current actix arbiter: at most `statements`
    /// statements in flight; batches that arrive meanwhile wait and go together.
    pub fn start(db: Db, statements: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            db,
            stats: WriterStats::default(),
        });
        actix::spawn(run(shared.clone(), rx, statements.max(1)));
        VarWriter { tx, shared }
    }

    pub fn stats(&self) -> &WriterStats {
        &self.shared.stats
    }

    /// One run's batch in its own statement now, not grouped (the RunActor's
    /// request-by-request retry).
    pub async fn write_alone(
        &self,
        run_id: Uuid,
        items: &[VarUpsert],
        seqs: Option<(i64, i64)>,
    ) -> Written {
        let batch = RunBatch {
            run: run_id,
            items,
            seqs,
        };
        self.shared.write_alone(batch).await
    }

    /// Writes one run's batch (distinct keys; `seqs`: the first and last
    /// stream `seq` it carries); answers after the commit.
    pub async fn write(
        &self,
        run_id: Uuid,
        items: Vec<VarUpsert>,
        seqs: Option<(i64, i64)>,
    ) -> Written {
        let (reply, rx) = oneshot::channel();
        let stats = self.stats();
        stats.queued.fetch_add(1, Ordering::Relaxed);
        self.tx
            .send(Job {
                run_id,
                items,
                seqs,
                reply,
            })
            .map_err(|_| {
                stats.queued.fetch_sub(1, Ordering::Relaxed);
                stopped()
            })?;
        rx.await.map_err(|_| stopped())?
    }
}

fn stopped() -> Error {
    Error::Unavailable(anyhow::anyhow!("the variable writer stopped"))
}

async fn run(writer: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Job>, statements: usize) {
    let slots = Arc::new(Semaphore::new(statements));
    let mut carry: Option<Job> = None;
    loop {
        // Take jobs only when a statement may start: until then they queue up
        // and the next statement carries all of them.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match carry.take() {
            Some(job) => job,
            None => match rx.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let mut rows = first.items.len();
        let mut jobs = vec![first];
        while rows < MAX_ROWS {
            match rx.try_recv() {
                Ok(job) if rows + job.items.len() > MAX_ROWS => {
                    carry = Some(job);
                    break;
                }
                Ok(job) => {
                    rows += job.items.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        writer
            .stats
            .queued
            .fetch_sub(jobs.len() as u64, Ordering::Relaxed);
        let writer = writer.clone();
        actix::spawn(async move {
            write_group(&writer, jobs).await;
            drop(slot);
        });
    }
}

async fn write_group(writer: &Shared, mut jobs: Vec<Job>) {
    // A caller that is gone (its actor stopped) is not written for.
    jobs.retain(|j| !j.reply.is_closed());
    // One batch per run in a statement: a second one for the same run (an actor
    // restarted while its batch waited here) goes alone, after.
    let mut seen = HashSet::new();
    let (group, mut alone): (Vec<Job>, Vec<Job>) =
        jobs.into_iter().partition(|j| seen.insert(j.run_id));
    if group.len() > 1 {
        let batches: Vec<RunBatch<'_>> = group.iter().map(Job::batch).collect();
        match writer.write(&batches).await {
            Ok(mut stored) => {
                for job in group {
                    let res = stored.remove(&job.run_id).unwrap_or(RunWrite::Finished);
                    let _ = job.reply.send(Ok(res));
                }
            }
            Err(e) => {
                writer.stats.group_retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, runs = group.len(), "group variable write failed; retrying run by run");
                alone.splice(0..0, group);
            }
        }
    } else {
        alone.splice(0..0, group);
    }
    for job in alone {
        let res = writer.write_alone(job.batch()).await;
        let _ = job.reply.send(res);
    }
}

impl Shared {
    /// One statement for `batches` (distinct runs), counted in the stats.
    async fn write(&self, batches: &[RunBatch<'_>]) -> Result<HashMap<Uuid, RunWrite>> {
        let rows: usize = batches.iter().map(|b| b.items.len()).sum();
        self.stats.statements.fetch_add(1, Ordering::Relaxed);
        self.stats.rows.fetch_add(rows as u64, Ordering::Relaxed);
        let client = self.db.write().await?;
        sql::upsert_vars(&client, batches, store::now_ms()).await
    }

    async fn write_alone(&self, batch: RunBatch<'_>) -> Written {
        let mut stored = self.write(&[batch]).await?;
        Ok(stored.remove(&batch.run).unwrap_or(RunWrite::Finished))
    }
}
