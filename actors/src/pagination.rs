//! Opaque keyset cursors: base64url of the last sort key plus a hash of the
//! filters, so that a cursor sent with other filters is refused.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// 0001-01-01T00:00:00.000Z in ms since the epoch.
pub const MIN_TIME_MS: i64 = -62_135_596_800_000;
/// 9999-12-31T23:59:59.999Z in ms since the epoch.
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;

/// The sort key of the last row of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
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

    /// Whether the key could be the sort key of a row: a time within years
    /// 1..=9999 (what a row holds; PostgreSQL refuses times far outside), or a
    /// version number from 1.
    pub fn is_plausible(self) -> bool {
        match self {
            Key::Time(ms, _) => (MIN_TIME_MS..=MAX_TIME_MS).contains(&ms),
            Key::Version(v) => v >= 1,
        }
    }

    pub fn as_version(self) -> Option<i32> {
        match self {
            Key::Version(v) => Some(v),
            Key::Time(..) => None,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Cursor {
    k: Key,
    f: String,
}

/// A short stable hash of the filters a list was asked with.
pub fn filter_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    let digest = h.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

pub fn encode(key: Key, filters: &str) -> String {
    let json = serde_json::to_vec(&Cursor {
        k: key,
        f: filters.to_string(),
    })
    .unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json)
}

/// The key of a cursor, if it is well-formed, was made for these filters and
/// holds a key a row could have (see [`Key::is_plausible`]).
pub fn decode(cursor: &str, filters: &str) -> Option<Key> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let c: Cursor = serde_json::from_slice(&bytes).ok()?;
    (c.f == filters && c.k.is_plausible()).then_some(c.k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_bind_filters() {
        let f = filter_hash(&["t1", "q"]);
        let key = Key::time(Utc::now(), Uuid::now_v7());
        let c = encode(key, &f);
        assert_eq!(decode(&c, &f), Some(key));
        assert_eq!(decode(&c, &filter_hash(&["t1", "other"])), None);
        assert_eq!(decode("not a cursor", &f), None);
        let v = encode(Key::Version(7), &f);
        assert_eq!(decode(&v, &f).and_then(Key::as_version), Some(7));
        assert_ne!(filter_hash(&["a", "bc"]), filter_hash(&["ab", "c"]));
    }

    #[test]
    fn implausible_keys_are_not_cursors() {
        let f = filter_hash(&["t1"]);
        let id = Uuid::now_v7();
        let min = Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0).unwrap();
        let max = Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap()
            + chrono::Duration::milliseconds(999);
        assert_eq!(min.timestamp_millis(), MIN_TIME_MS);
        assert_eq!(max.timestamp_millis(), MAX_TIME_MS);
        for ms in [MIN_TIME_MS, 0, MAX_TIME_MS] {
            let key = Key::Time(ms, id);
            assert_eq!(decode(&encode(key, &f), &f), Some(key), "{ms}");
            assert!(key.as_time().is_some());
        }
        for ms in [
            MIN_TIME_MS - 1,
            MAX_TIME_MS + 1,
            -300_000_000_000_000,
            i64::MIN,
            i64::MAX,
        ] {
            assert_eq!(decode(&encode(Key::Time(ms, id), &f), &f), None, "{ms}");
        }
        assert_eq!(
            decode(&encode(Key::Version(1), &f), &f),
            Some(Key::Version(1))
        );
        for v in [0, -1, i32::MIN] {
            assert_eq!(decode(&encode(Key::Version(v), &f), &f), None, "{v}");
        }
        let huge = URL_SAFE_NO_PAD.encode(format!(r#"{{"k":2147483648,"f":"{f}"}}"#));
        assert_eq!(decode(&huge, &f), None);
    }
}
