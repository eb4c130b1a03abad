//! The open runner streams of this process: at most one per run (a new
//! upgrade replaces the older stream), and all of them told to end at shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{oneshot, watch, Notify};
use uuid::Uuid;

struct Open {
    id: u64,
    replaced: oneshot::Sender<()>,
}

pub struct RunStreams {
    open: Mutex<HashMap<Uuid, Open>>,
    next_id: AtomicU64,
    shutdown: watch::Sender<bool>,
    closed: Notify,
    pub stats: StreamStats,
}

/// Frames answered on the runner streams of this process, since start.
#[derive(Debug, Default)]
pub struct StreamStats {
    pub acked: AtomicU64,
    pub duplicates: AtomicU64,
    pub refused: AtomicU64,
}

/// How one frame was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    Acked,
    Duplicate,
    Refused,
}

impl StreamStats {
    pub fn count(&self, answered: Answered) {
        let counter = match answered {
            Answered::Acked => &self.acked,
            Answered::Duplicate => &self.duplicates,
            Answered::Refused => &self.refused,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Default for RunStreams {
    fn default() -> Self {
        RunStreams {
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            shutdown: watch::Sender::new(false),
            closed: Notify::new(),
            stats: StreamStats::default(),
        }
    }
}

/// One open stream's place in the registry; dropping it leaves.
pub struct Registration<'a> {
    streams: &'a RunStreams,
    run: Uuid,
    id: u64,
    /// Fires when a newer stream on the same run took over.
    pub replaced: oneshot::Receiver<()>,
    /// Turns true when the process shuts down.
    pub shutdown: watch::Receiver<bool>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut open = self.streams.lock();
        if open.get(&self.run).is_some_and(|o| o.id == self.id) {
            open.remove(&self.run);
        }
        drop(open);
        self.streams.closed.notify_waiters();
    }
}

impl RunStreams {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Open>> {
        // Every operation is one insert or remove: a poisoned map is consistent.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a stream on `run`, telling the older one (if any) to end.
    pub fn register(&self, run: Uuid) -> Registration<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, replaced) = oneshot::channel();
        let older = self.lock().insert(run, Open { id, replaced: tx });
        if let Some(older) = older {
            let _ = older.replaced.send(());
        }
        Registration {
            streams: self,
            run,
            id,
            replaced,
            shutdown: self.shutdown.subscribe(),
        }
    }

    pub fn open_count(&self) -> usize {
        self.lock().len()
    }

    /// Tells every stream to ack what committed and close (1001), and waits
    /// up to `limit` for them to be gone.
    pub async fn close_all(&self, limit: Duration) {
        self.shutdown.send_replace(true);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let closed = self.closed.notified();
            if self.open_count() == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, closed).await.is_err() {
                tracing::warn!(
                    open = self.open_count(),
                    "runner streams still open at the shutdown deadline"
                );
                return;
            }
        }
    }
}
