//! Keyset pagination at the edge: `?limit=&cursor=` in, `{ items, nextCursor }`
//! out. A cursor is base64url of the last row's sort key plus a hash of the
//! list's filters, so that a cursor sent with other filters is refused.

use actors::domain::{Key, Page as Rows, Window};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::http::error::ApiError;

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 200;

/// One page of a list.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Page<T: ToSchema> {
    pub items: Vec<T>,
    /// Pass as `?cursor=` for the next page; null only when no row follows.
    pub next_cursor: Option<String>,
}

/// The sort key as a cursor holds it.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum CursorKey {
    Time(i64, Uuid),
    Version(i32),
}

#[derive(Serialize, Deserialize)]
struct Cursor {
    k: CursorKey,
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
    let k = match key {
        Key::Time(ms, id) => CursorKey::Time(ms, id),
        Key::Version(v) => CursorKey::Version(v),
    };
    let json = serde_json::to_vec(&Cursor {
        k,
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
    let key = match c.k {
        CursorKey::Time(ms, id) => Key::Time(ms, id),
        CursorKey::Version(v) => Key::Version(v),
    };
    (c.f == filters && key.is_plausible()).then_some(key)
}

/// The kind of sort key a list pages by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// Newest first by (time, id).
    Time,
    /// Highest version first.
    Version,
}

/// A validated page request.
pub struct PageRequest {
    pub window: Window,
    filters: String,
}

impl PageRequest {
    /// `filters`: every filter of the list, so that a cursor only works with
    /// the filters it was made for; `kind`: the list's sort key.
    pub fn parse(
        limit: Option<u32>,
        cursor: Option<&str>,
        filters: &[&str],
        kind: KeyKind,
    ) -> Result<Self, ApiError> {
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::field("limit", format!("must be 1..{MAX_LIMIT}")));
        }
        let filters = filter_hash(filters);
        let after = match cursor {
            None | Some("") => None,
            Some(c) => {
                let key = decode(c, &filters).ok_or_else(|| {
                    ApiError::field("cursor", "is not a cursor of this list with these filters")
                })?;
                let fits = match kind {
                    KeyKind::Time => key.as_time().is_some(),
                    KeyKind::Version => key.as_version().is_some(),
                };
                if !fits {
                    return Err(ApiError::field("cursor", "is not a cursor of this list"));
                }
                Some(key)
            }
        };
        Ok(PageRequest {
            window: Window { after, limit },
            filters,
        })
    }

    /// The page on the wire: its items as views, the next cursor from the
    /// key the core handed back.
    pub fn finish<T, V: ToSchema + From<T>>(&self, rows: Rows<T>) -> Page<V> {
        Page {
            items: rows.items.into_iter().map(V::from).collect(),
            next_cursor: rows.next.map(|k| encode(k, &self.filters)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actors::domain::page::{MAX_TIME_MS, MIN_TIME_MS};
    use chrono::{TimeZone, Utc};

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
