//! What the script actors keep for reads: each script's view (the script and
//! its active version) and the versions read of it, in one table that the
//! request threads read without a mailbox hop, bounded by bytes (least
//! recently used first).
//!
//! Consistency, as the contract's "Consistency of reads" says:
//! - A write of this process updates the entry after its commit, before its
//!   caller is answered (read-your-writes).
//! - Every change of a script row NOTIFYs its id and revision; an entry older
//!   than the notified revision becomes a floor: nothing older than it is
//!   cached again (a read that started before the change cannot bring it
//!   back), and no revision older than one answered is cached after it.
//! - While the listening connection is lost nothing is served from memory,
//!   and every entry is dropped: a change may have gone unnoticed. Serving
//!   resumes once LISTEN is in place again; reads that started before are not
//!   cached (the epoch changed).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lru::LruCache;
use uuid::Uuid;

use crate::domain::{ScriptView, Version};

/// Counters for /metrics.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub invalidations: AtomicU64,
    pub evictions: AtomicU64,
    /// Times the listener was lost and every entry dropped.
    pub suspensions: AtomicU64,
    pub bytes: AtomicU64,
    pub entries: AtomicU64,
}

struct Entry {
    revision: i64,
    /// `None`: a floor (the entry was invalidated at `revision`).
    view: Option<Arc<ScriptView>>,
    versions: HashMap<i32, Arc<Version>>,
    bytes: usize,
}

/// The epoch a read started in: its result is cached only if no listener
/// loss happened meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch(u64);

pub struct ReadCache {
    entries: Mutex<LruCache<Uuid, Entry>>,
    budget: usize,
    bytes: AtomicU64,
    epoch: AtomicU64,
    serving: AtomicBool,
    pub stats: CacheStats,
}

/// What an entry of no content costs (key, revision, bookkeeping).
const ENTRY_OVERHEAD: usize = 128;

fn json_bytes(v: &serde_json::Value) -> usize {
    serde_json::to_vec(v).map_or(0, |b| b.len())
}

fn version_bytes(v: &Version) -> usize {
    json_bytes(&v.graph_json)
        + v.variables_def.as_ref().map_or(0, json_bytes)
        + v.changelog.as_ref().map_or(0, String::len)
        + ENTRY_OVERHEAD
}

fn view_bytes(v: &ScriptView) -> usize {
    let s = &v.script;
    let strings = s.name.len()
        + s.slug.len()
        + s.description.as_ref().map_or(0, String::len)
        + s.labels
            .iter()
            .chain(&s.intents)
            .chain(&s.language_codes)
            .map(String::len)
            .sum::<usize>();
    strings + v.active_version.as_ref().map_or(0, version_bytes) + ENTRY_OVERHEAD
}

impl ReadCache {
    /// A cache of at most `budget` bytes; it serves once `resume` is called
    /// (when the listener is in place).
    pub fn new(budget: usize) -> Self {
        ReadCache {
            entries: Mutex::new(LruCache::unbounded()),
            budget,
            bytes: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            serving: AtomicBool::new(false),
            stats: CacheStats::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<Uuid, Entry>> {
        // Every operation leaves the map consistent: usable after a panic.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enabled(&self) -> bool {
        self.budget > 0 && self.serving.load(Ordering::Acquire)
    }

    /// The epoch to pass to `insert_*` for a read that starts now.
    pub fn epoch(&self) -> Epoch {
        Epoch(self.epoch.load(Ordering::Acquire))
    }

    /// The cached view of a script, if any (counted as a hit or a miss).
    pub fn view(&self, id: Uuid) -> Option<Arc<ScriptView>> {
        let found = if self.enabled() {
            self.lock().get(&id).and_then(|e| e.view.clone())
        } else {
            None
        };
        self.count(found.is_some());
        found
    }

    fn count(&self, hit: bool) {
        let counter = if hit {
            &self.stats.hits
        } else {
            &self.stats.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A cached version of a script whose view is cached at `revision`.
    pub fn version(&self, id: Uuid, revision: i64, version: i32) -> Option<Arc<Version>> {
        if !self.enabled() {
            return None;
        }
        let mut entries = self.lock();
        let entry = entries.get(&id)?;
        let found = (entry.revision == revision && entry.view.is_some())
            .then(|| entry.versions.get(&version).cloned())
            .flatten();
        self.count(found.is_some());
        found
    }

    /// Caches a view read in `epoch` (or written by this process), unless an
    /// entry at a higher revision (or a floor above it) is there.
    pub fn insert_view(&self, view: impl Into<Arc<ScriptView>>, epoch: Epoch) {
        if !self.enabled() || self.epoch() != epoch {
            return;
        }
        let view = view.into();
        let id = view.script.id;
        let revision = view.script.revision;
        let mut entries = self.lock();
        if entries.peek(&id).is_some_and(|e| e.revision > revision) {
            return;
        }
        let bytes = view_bytes(&view);
        let entry = Entry {
            revision,
            view: Some(view),
            versions: HashMap::new(),
            bytes,
        };
        self.put(&mut entries, id, entry);
    }

    /// Caches a version of a script whose view is cached at `revision`.
    pub fn insert_version(&self, id: Uuid, revision: i64, version: Version, epoch: Epoch) {
        if !self.enabled() || self.epoch() != epoch {
            return;
        }
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(&id) else {
            return;
        };
        if entry.revision != revision || entry.view.is_none() {
            return;
        }
        let bytes = version_bytes(&version);
        entry.bytes += bytes;
        entry.versions.insert(version.version, Arc::new(version));
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.evict(&mut entries);
    }

    /// A change of the script to `revision` (NOTIFY, or a write of this
    /// process whose view is not at hand): older content goes.
    pub fn invalidate(&self, id: Uuid, revision: i64) {
        let mut entries = self.lock();
        if entries.peek(&id).is_some_and(|e| e.revision >= revision) {
            return;
        }
        if entries.peek(&id).is_some_and(|e| e.view.is_some()) {
            self.stats.invalidations.fetch_add(1, Ordering::Relaxed);
        }
        let floor = Entry {
            revision,
            view: None,
            versions: HashMap::new(),
            bytes: ENTRY_OVERHEAD,
        };
        self.put(&mut entries, id, floor);
    }

    /// The listener is lost: serve nothing from memory, drop everything.
    pub fn suspend(&self) {
        self.serving.store(false, Ordering::Release);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let mut entries = self.lock();
        entries.clear();
        self.bytes.store(0, Ordering::Relaxed);
        self.stats.suspensions.fetch_add(1, Ordering::Relaxed);
        self.publish_size(&entries);
    }

    /// LISTEN is in place: serve from memory again (reads that started
    /// before are not cached).
    pub fn resume(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.serving.store(true, Ordering::Release);
    }

    fn put(&self, entries: &mut LruCache<Uuid, Entry>, id: Uuid, entry: Entry) {
        self.bytes.fetch_add(entry.bytes as u64, Ordering::Relaxed);
        if let Some(old) = entries.put(id, entry) {
            self.bytes.fetch_sub(old.bytes as u64, Ordering::Relaxed);
        }
        self.evict(entries);
    }

    /// Least recently used first, until the entries fit the budget.
    fn evict(&self, entries: &mut LruCache<Uuid, Entry>) {
        while self.bytes.load(Ordering::Relaxed) as usize > self.budget {
            let Some((_, old)) = entries.pop_lru() else {
                break;
            };
            self.bytes.fetch_sub(old.bytes as u64, Ordering::Relaxed);
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
        }
        self.publish_size(entries);
    }

    fn publish_size(&self, entries: &LruCache<Uuid, Entry>) {
        let bytes = self.bytes.load(Ordering::Relaxed);
        self.stats.bytes.store(bytes, Ordering::Relaxed);
        self.stats
            .entries
            .store(entries.len() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Script, ScriptStatus};
    use chrono::Utc;

    fn view(id: Uuid, revision: i64, name: &str) -> ScriptView {
        let now = Utc::now();
        ScriptView {
            script: Script {
                id,
                tenant_id: "t".into(),
                name: name.into(),
                slug: "s".into(),
                description: None,
                status: ScriptStatus::Draft,
                active_version_id: None,
                latest_version: 0,
                labels: vec![],
                intents: vec![],
                language_codes: vec![],
                embedding_key: None,
                created_by_id: "a".into(),
                updated_by_id: "a".into(),
                created_at: now,
                updated_at: now,
                revision,
            },
            active_version: None,
        }
    }

    fn serving(budget: usize) -> ReadCache {
        let c = ReadCache::new(budget);
        c.resume();
        c
    }

    #[test]
    fn a_floor_keeps_an_older_read_out_and_a_newer_one_in() {
        let c = serving(1 << 20);
        let id = Uuid::now_v7();
        let before = c.epoch();
        c.invalidate(id, 5);
        c.insert_view(view(id, 4, "old"), before);
        assert!(
            c.view(id).is_none(),
            "a read older than the change is not cached"
        );
        c.insert_view(view(id, 5, "new"), before);
        assert_eq!(c.view(id).unwrap().script.name, "new");
        // A lower revision never replaces a higher one.
        c.insert_view(view(id, 3, "older"), c.epoch());
        assert_eq!(c.view(id).unwrap().script.revision, 5);
        // A notification of what is cached already changes nothing.
        c.invalidate(id, 5);
        assert!(c.view(id).is_some());
        c.invalidate(id, 6);
        assert!(c.view(id).is_none());
        assert_eq!(c.stats.invalidations.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_lost_listener_drops_everything_and_older_reads_stay_out() {
        let c = serving(1 << 20);
        let id = Uuid::now_v7();
        c.insert_view(view(id, 1, "a"), c.epoch());
        let started = c.epoch();
        c.suspend();
        assert!(c.view(id).is_none());
        c.insert_view(view(id, 1, "a"), c.epoch());
        assert!(c.view(id).is_none(), "nothing is cached while suspended");
        c.resume();
        c.insert_view(view(id, 1, "a"), started);
        assert!(
            c.view(id).is_none(),
            "a read from before the loss is not cached"
        );
        c.insert_view(view(id, 1, "a"), c.epoch());
        assert!(c.view(id).is_some());
    }

    #[test]
    fn the_least_recently_used_go_first_when_over_budget() {
        let one = view_bytes(&view(Uuid::nil(), 1, "x"));
        let c = serving(3 * one);
        let ids: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
        for id in &ids[..3] {
            c.insert_view(view(*id, 1, "x"), c.epoch());
        }
        assert!(c.view(ids[0]).is_some()); // now the most recently used
        c.insert_view(view(ids[3], 1, "x"), c.epoch());
        assert!(c.view(ids[1]).is_none(), "the least recently used went");
        assert!(c.view(ids[0]).is_some() && c.view(ids[2]).is_some() && c.view(ids[3]).is_some());
        assert!(c.stats.bytes.load(Ordering::Relaxed) as usize <= 3 * one);
        assert_eq!(c.stats.evictions.load(Ordering::Relaxed), 1);
    }
}
