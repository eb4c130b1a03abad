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

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot, Semaphore};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::runs::model::{RunVariable, VarUpsert};
use crate::store::{self, runs as sql};

/// Rows written in one statement at most (a request holds up to 500).
const MAX_ROWS: usize = 5000;

/// The stored rows of one run's batch, or `None` when the run is not RUNNING.
pub type Written = Result<Option<Vec<RunVariable>>>;

struct Job {
    run_id: Uuid,
    items: Vec<VarUpsert>,
    reply: oneshot::Sender<Written>,
}

/// What the writer has done, for /metrics.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Run batches waiting for a statement.
    pub queued: AtomicU64,
    /// Statements run (groups and single runs, retries included).
    pub statements: AtomicU64,
    /// Variable rows sent in those statements.
    pub rows: AtomicU64,
    /// Groups that failed and were retried run by run.
    pub group_retries: AtomicU64,
}

/// Handle to the process's writer task (cheap to clone).
#[derive(Clone)]
pub struct VarWriter {
    tx: mpsc::UnboundedSender<Job>,
    stats: Arc<WriterStats>,
}

impl VarWriter {
    /// Starts the writer on the current actix arbiter: at most `statements`
    /// statements in flight; batches that arrive meanwhile wait and go together.
    pub fn start(pool: Pool, statements: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(WriterStats::default());
        actix::spawn(run(pool, rx, statements.max(1), stats.clone()));
        VarWriter { tx, stats }
    }

    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Writes one run's batch (distinct keys); answers after the commit.
    pub async fn write(&self, run_id: Uuid, items: Vec<VarUpsert>) -> Written {
        let (reply, rx) = oneshot::channel();
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        self.tx
            .send(Job {
                run_id,
                items,
                reply,
            })
            .map_err(|_| {
                self.stats.queued.fetch_sub(1, Ordering::Relaxed);
                stopped()
            })?;
        rx.await.map_err(|_| stopped())?
    }
}

fn stopped() -> Error {
    Error::Unavailable(anyhow::anyhow!("the variable writer stopped"))
}

async fn run(
    pool: Pool,
    mut rx: mpsc::UnboundedReceiver<Job>,
    statements: usize,
    stats: Arc<WriterStats>,
) {
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
        stats.queued.fetch_sub(jobs.len() as u64, Ordering::Relaxed);
        let pool = pool.clone();
        let stats = stats.clone();
        actix::spawn(async move {
            write_group(&pool, &stats, jobs).await;
            drop(slot);
        });
    }
}

async fn write_group(pool: &Pool, stats: &WriterStats, mut jobs: Vec<Job>) {
    // A caller that is gone (its actor stopped) is not written for.
    jobs.retain(|j| !j.reply.is_closed());
    // One batch per run in a statement: a second one for the same run (an actor
    // restarted while its batch waited here) goes alone, after.
    let mut seen = HashSet::new();
    let (group, later): (Vec<Job>, Vec<Job>) =
        jobs.into_iter().partition(|j| seen.insert(j.run_id));
    let mut alone = later;
    if group.len() == 1 {
        alone.splice(0..0, group);
    } else if !group.is_empty() {
        let refs: Vec<Vec<&VarUpsert>> = group.iter().map(|j| j.items.iter().collect()).collect();
        let batches: Vec<(Uuid, &[&VarUpsert])> = group
            .iter()
            .zip(&refs)
            .map(|(j, items)| (j.run_id, items.as_slice()))
            .collect();
        match write(pool, Some(stats), &batches).await {
            Ok(mut stored) => {
                for job in group {
                    let _ = job.reply.send(Ok(stored.remove(&job.run_id)));
                }
            }
            Err(e) => {
                stats.group_retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, runs = group.len(), "group variable write failed; retrying run by run");
                alone.splice(0..0, group);
            }
        }
    }
    for job in alone {
        let items: Vec<&VarUpsert> = job.items.iter().collect();
        let res = write(pool, Some(stats), &[(job.run_id, &items)])
            .await
            .map(|mut stored| stored.remove(&job.run_id));
        let _ = job.reply.send(res);
    }
}

/// One run's batch in its own statement, without the writer (the RunActor's
/// request-by-request retry).
pub async fn write_run(pool: &Pool, run_id: Uuid, items: &[&VarUpsert]) -> Written {
    Ok(write(pool, None, &[(run_id, items)]).await?.remove(&run_id))
}

async fn write(
    pool: &Pool,
    stats: Option<&WriterStats>,
    batches: &[(Uuid, &[&VarUpsert])],
) -> Result<HashMap<Uuid, Vec<RunVariable>>> {
    if let Some(stats) = stats {
        let rows: usize = batches.iter().map(|(_, items)| items.len()).sum();
        stats.statements.fetch_add(1, Ordering::Relaxed);
        stats.rows.fetch_add(rows as u64, Ordering::Relaxed);
    }
    let client = pool.get().await?;
    sql::upsert_vars(&client, batches, store::now_ms()).await
}
