//! SQL for the `events` table: serialized appends announced with NOTIFY, and
//! the reads behind live delivery, replay and retention.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use crate::error::Result;
use crate::events::model::{NewEvent, StoredEvent};

/// NOTIFY channel announcing a new event id.
pub const EVENTS_CHANNEL: &str = "scriptd_events";
/// Advisory lock key serializing event appends across all processes, so that
/// event ids become visible in commit order ("sced" "evts").
pub const APPEND_LOCK: i64 = 0x7363_6564_6576_7473;

const COLUMNS: &str = "id, tenant_id, name, correlation_id, success, payload, occurred_at";

fn event_from(row: &Row) -> StoredEvent {
    StoredEvent::new(
        row.get("id"),
        row.get("tenant_id"),
        row.get("name"),
        row.get("correlation_id"),
        row.get("success"),
        row.get("payload"),
        row.get("occurred_at"),
    )
}

/// Appends events inside the caller's transaction. Call it last, just before
/// the commit: the advisory lock it takes is held until then, which is what
/// makes ids visible in commit order. One NOTIFY carries the last id.
pub async fn append(
    client: &impl GenericClient,
    events: &[NewEvent],
    now: DateTime<Utc>,
) -> Result<Vec<i64>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let lock = client
        .prepare_cached("SELECT pg_advisory_xact_lock($1)")
        .await?;
    client.execute(&lock, &[&APPEND_LOCK]).await?;
    let stmt = client
        .prepare_cached(
            "INSERT INTO events (tenant_id, name, correlation_id, success, payload, occurred_at) \
             SELECT u.tenant_id, u.name, u.correlation_id, u.success, u.payload, $1 \
             FROM UNNEST($2::text[], $3::text[], $4::text[], $5::bool[], $6::jsonb[]) WITH ORDINALITY \
               AS u(tenant_id, name, correlation_id, success, payload, n) \
             ORDER BY u.n RETURNING id",
        )
        .await?;
    let tenants: Vec<&str> = events.iter().map(|e| e.tenant_id.as_str()).collect();
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    let correlations: Vec<Option<&str>> =
        events.iter().map(|e| e.correlation_id.as_deref()).collect();
    let successes: Vec<bool> = events.iter().map(|e| e.success).collect();
    let payloads: Vec<&serde_json::Value> = events.iter().map(|e| &e.payload).collect();
    let rows = client
        .query(
            &stmt,
            &[&now, &tenants, &names, &correlations, &successes, &payloads],
        )
        .await?;
    // Ids follow the input order (ORDER BY ordinality feeds nextval in order).
    let mut ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    ids.sort_unstable();
    let notify = client.prepare_cached("SELECT pg_notify($1, $2)").await?;
    let last = ids.last().copied().unwrap_or_default().to_string();
    client.execute(&notify, &[&EVENTS_CHANNEL, &last]).await?;
    Ok(ids)
}

/// Events of every tenant after `after`, in id order (the hub's live feed).
pub async fn after(
    client: &impl GenericClient,
    after: i64,
    limit: i64,
) -> Result<Vec<StoredEvent>> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM events WHERE id > $1 ORDER BY id LIMIT $2"
        ))
        .await?;
    Ok(client
        .query(&stmt, &[&after, &limit])
        .await?
        .iter()
        .map(event_from)
        .collect())
}

/// A tenant's events in `(after, up_to]`, optionally of one correlation (replay).
pub async fn replay(
    client: &impl GenericClient,
    tenant: &str,
    correlation: Option<&str>,
    after: i64,
    up_to: i64,
    limit: i64,
) -> Result<Vec<StoredEvent>> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM events WHERE tenant_id = $1 \
               AND ($2::text IS NULL OR correlation_id = $2) AND id > $3 AND id <= $4 \
             ORDER BY id LIMIT $5"
        ))
        .await?;
    Ok(client
        .query(&stmt, &[&tenant, &correlation, &after, &up_to, &limit])
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

/// The highest id ever handed out (including purged and rolled-back ones).
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
