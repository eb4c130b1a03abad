//! Keyset pagination at the edge: `?limit=&cursor=` in, `{ items, nextCursor }` out.

use actors::pagination::{self, Key};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiError;

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

/// A validated page request.
pub struct PageRequest {
    pub limit: u32,
    pub after: Option<Key>,
    filters: String,
}

impl PageRequest {
    /// `filters`: every filter of the list, so that a cursor only works with
    /// the filters it was made for.
    pub fn parse(
        limit: Option<u32>,
        cursor: Option<&str>,
        filters: &[&str],
    ) -> Result<Self, ApiError> {
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::field("limit", format!("must be 1..{MAX_LIMIT}")));
        }
        let filters = pagination::filter_hash(filters);
        let after = match cursor {
            None | Some("") => None,
            Some(c) => Some(pagination::decode(c, &filters).ok_or_else(|| {
                ApiError::field("cursor", "is not a cursor of this list with these filters")
            })?),
        };
        Ok(PageRequest {
            limit,
            after,
            filters,
        })
    }

    /// Rows to fetch: one more than the page, to know whether another follows.
    pub fn fetch(&self) -> i64 {
        self.limit as i64 + 1
    }

    pub fn after_time(
        &self,
    ) -> Result<Option<(chrono::DateTime<chrono::Utc>, uuid::Uuid)>, ApiError> {
        self.after
            .map(|k| {
                k.as_time()
                    .ok_or_else(|| ApiError::field("cursor", "is not a cursor of this list"))
            })
            .transpose()
    }

    pub fn after_version(&self) -> Result<Option<i32>, ApiError> {
        self.after
            .map(|k| {
                k.as_version()
                    .ok_or_else(|| ApiError::field("cursor", "is not a cursor of this list"))
            })
            .transpose()
    }

    /// Cuts the extra row off and makes the cursor from the last row kept.
    pub fn finish<T: ToSchema>(&self, mut rows: Vec<T>, key: impl Fn(&T) -> Key) -> Page<T> {
        let more = rows.len() > self.limit as usize;
        rows.truncate(self.limit as usize);
        let next_cursor = if more {
            rows.last()
                .map(|r| pagination::encode(key(r), &self.filters))
        } else {
            None
        };
        Page {
            items: rows,
            next_cursor,
        }
    }
}
