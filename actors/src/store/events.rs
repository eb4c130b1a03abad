//! SQL for the `events` table: serialized appends announced with NOTIFY, and
//! the reads behind live delivery, replay and retention.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use crate::domain::{Event, NewEvent, Result};

const COLUMNS: &str = "id, tenant_id, name, correlation_id, success, payload, occurred_at";

fn event_from(row: &Row) -> Event {
    Event::new(
        row.get("id"),
        row.get("occurred_at"),
        NewEvent {
            tenant_id: row.get("tenant_id"),
            name: row.get("name"),
            correlation_id: row.get("correlation_id"),
            success: row.get("success"),
            payload: row.get("payload"),
        },
    )
}

/// Appends events in one round trip (`scriptd_append_events`, migration V3):
/// the advisory lock, the rows, one NOTIFY with the last id. Inside a
/// transaction call it last, just before the commit: the lock is held until
/// then, which is what makes ids visible in commit order. Outside one, the
/// statement is its own transaction.
pub async fn append(
    client: &impl GenericClient,
    events: &[NewEvent],
    now: DateTime<Utc>,
) -> Result<Vec<i64>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let stmt = client
        .prepare_cached("SELECT scriptd_append_events($1, $2, $3, $4, $5, $6)")
        .await?;
    let tenants: Vec<&str> = events.iter().map(|e| e.tenant_id.as_str()).collect();
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    let correlations: Vec<Option<&str>> =
        events.iter().map(|e| e.correlation_id.as_deref()).collect();
    let successes: Vec<bool> = events.iter().map(|e| e.success).collect();
    let payloads: Vec<&serde_json::Value> = events.iter().map(|e| &e.payload).collect();
    let row = client
        .query_one(
            &stmt,
            &[&tenants, &names, &correlations, &successes, &payloads, &now],
        )
        .await?;
    Ok(row.get(0))
}

/// Events of every tenant after `after`, in id order (the hub's live feed).
pub async fn after(client: &impl GenericClient, after: i64, limit: i64) -> Result<Vec<Event>> {
    let sql = format!("SELECT {COLUMNS} FROM events WHERE id > $1 ORDER BY id LIMIT $2");
    super::all(client, &sql, &[&after, &limit], event_from).await
}

/// A tenant's events in `(after, up_to]`, optionally of one correlation
/// (replay): at most `limit` rows and, past the first row, at most `max_bytes`
/// of payload, so that one page of large events stays small in memory.
pub async fn replay(
    client: &impl GenericClient,
    tenant: &str,
    correlation: Option<&str>,
    after: i64,
    up_to: i64,
    limit: i64,
    max_bytes: i64,
) -> Result<Vec<Event>> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM ( \
               SELECT p.*, sum(p.size) OVER (ORDER BY p.id) - p.size AS before \
               FROM ( \
                 SELECT {COLUMNS}, octet_length(payload::text) AS size FROM events \
                 WHERE tenant_id = $1 AND ($2::text IS NULL OR correlation_id = $2) \
                   AND id > $3 AND id <= $4 \
                 ORDER BY id LIMIT $5 \
               ) p \
             ) w WHERE w.before < $6 ORDER BY id"
        ))
        .await?;
    Ok(client
        .query(
            &stmt,
            &[&tenant, &correlation, &after, &up_to, &limit, &max_bytes],
        )
        .await?
        .iter()
        .map(event_from)
        .collect())
}

/// The lowest and highest retained ids (`None` when there are no events).
pub async fn bounds(client: &impl GenericClient) -> Result<(Option<i64>, Option<i64>)> {
    let stmt = client
        .prepare_cached("SELECT min(id), max(id) FROM events")
        .await?;
    let row = client.query_one(&stmt, &[]).await?;
    Ok((row.get(0), row.get(1)))
}

/// The highest id in the table (0 when it is empty): live delivery starts
/// after it.
pub async fn last_id(client: &impl GenericClient) -> Result<i64> {
    let stmt = client
        .prepare_cached("SELECT COALESCE((SELECT max(id) FROM events), 0)")
        .await?;
    Ok(client.query_one(&stmt, &[]).await?.get(0))
}

/// Deletes events older than `before`; returns how many.
pub async fn purge(client: &impl GenericClient, before: DateTime<Utc>) -> Result<u64> {
    let stmt = client
        .prepare_cached("DELETE FROM events WHERE occurred_at < $1")
        .await?;
    Ok(client.execute(&stmt, &[&before]).await?)
}
