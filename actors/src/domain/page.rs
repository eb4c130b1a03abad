//! Keyset pages: where a page starts (the sort key of the row before it) and
//! how many rows it holds. Cursors, their encoding and their binding to a
//! list's filters belong to the edge.

use chrono::{DateTime, TimeZone, Utc};
use uuid::Uuid;

/// 0001-01-01T00:00:00.000Z in ms since the epoch.
pub const MIN_TIME_MS: i64 = -62_135_596_800_000;
/// 9999-12-31T23:59:59.999Z in ms since the epoch.
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;

/// The sort key of the last row of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// (created_at or started_at in ms, id): lists newest first.
    Time(i64, Uuid),
    /// A version number: versions highest first.
    Version(i32),
}

impl Key {
    pub fn time(t: DateTime<Utc>, id: Uuid) -> Self {
        Key::Time(t.timestamp_millis(), id)
    }

    pub fn as_time(self) -> Option<(DateTime<Utc>, Uuid)> {
        match self {
            Key::Time(ms, id) => Utc.timestamp_millis_opt(ms).single().map(|t| (t, id)),
            Key::Version(_) => None,
        }
    }

    pub fn as_version(self) -> Option<i32> {
        match self {
            Key::Version(v) => Some(v),
            Key::Time(..) => None,
        }
    }

    /// Whether the key could be the sort key of a row: a time within years
    /// 1..=9999 (what a row holds; PostgreSQL refuses times far outside), or a
    /// version number from 1.
    pub fn is_plausible(self) -> bool {
        match self {
            Key::Time(ms, _) => (MIN_TIME_MS..=MAX_TIME_MS).contains(&ms),
            Key::Version(v) => v >= 1,
        }
    }
}

/// Which page of a list: after which row, and how many rows.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub after: Option<Key>,
    pub limit: u32,
}

/// One page of rows, and the key to continue after when more follow.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<Key>,
}

impl Window {
    /// Rows to fetch: one more than the page, to know whether another follows.
    pub fn fetch(&self) -> i64 {
        self.limit as i64 + 1
    }

    pub fn after_time(&self) -> Option<(DateTime<Utc>, Uuid)> {
        self.after.and_then(Key::as_time)
    }

    pub fn after_version(&self) -> Option<i32> {
        self.after.and_then(Key::as_version)
    }

    /// Cuts the extra row off; `next` is the key of the last row kept.
    pub fn page<T>(&self, mut rows: Vec<T>, key: impl Fn(&T) -> Key) -> Page<T> {
        let more = rows.len() > self.limit as usize;
        rows.truncate(self.limit as usize);
        let next = if more { rows.last().map(key) } else { None };
        Page { items: rows, next }
    }
}
