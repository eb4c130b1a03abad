//! SQL for `command_outbox`: insert (announced with NOTIFY), claim with
//! `FOR UPDATE SKIP LOCKED`, and the outcomes.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::{json, Value};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::domain::{
    Command, CommandStatus, Completed, Error, ErrorCode, NewCommand, NewEvent, Result,
};
use crate::store::notify::OUTBOX_CHANNEL;
use crate::store::unique_violation;

const COLUMNS: &str = "id, tenant_id, command, correlation_id, actor_user_id, context, payload, \
     status, attempts, result, last_error, created_at, updated_at";

fn command_from(row: &Row) -> Command {
    Command {
        id: row.get("id"),
        tenant_id: row.get("tenant_id"),
        command: row.get("command"),
        correlation_id: row.get("correlation_id"),
        actor_user_id: row.get("actor_user_id"),
        context: row.get("context"),
        payload: row.get("payload"),
        status: CommandStatus::parse(row.get("status")).unwrap_or(CommandStatus::Pending),
        attempts: row.get("attempts"),
        result: row
            .get::<_, Option<Value>>("result")
            .as_ref()
            .and_then(completed_from),
        last_error: row.get("last_error"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    }
}

/// How a completion is kept in `result` (the shape `GET /commands/:id` has
/// always shown, so older rows read back the same).
fn completed_json(c: &Completed) -> Value {
    let e = &c.event;
    json!({
        "event": e.name,
        "correlationId": e.correlation_id,
        "success": e.success,
        "payload": e.payload,
        "tenantId": e.tenant_id,
        "occurredAt": c.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
}

fn completed_from(v: &Value) -> Option<Completed> {
    let occurred_at = DateTime::parse_from_rfc3339(v.get("occurredAt")?.as_str()?).ok()?;
    Some(Completed {
        event: NewEvent {
            tenant_id: v.get("tenantId")?.as_str()?.to_string(),
            name: v.get("event")?.as_str()?.to_string(),
            correlation_id: v.get("correlationId")?.as_str().map(str::to_string),
            success: v.get("success")?.as_bool()?,
            payload: v.get("payload")?.clone(),
        },
        occurred_at: occurred_at.with_timezone(&Utc),
    })
}

/// Inserts a PENDING command and announces it (the NOTIFY is delivered at
/// commit); a correlation id already used in the tenant is refused.
#[tracing::instrument(level = "debug", skip_all, fields(tenant = %c.tenant_id, correlation = %c.correlation_id))]
pub async fn insert(
    client: &impl GenericClient,
    c: &NewCommand,
    now: DateTime<Utc>,
) -> Result<Uuid> {
    let id = Uuid::now_v7();
    let stmt = client
        .prepare_cached(
            "INSERT INTO command_outbox (id, tenant_id, command, correlation_id, actor_user_id, \
             created_by_id, context, payload, status, attempts, next_attempt_at, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'PENDING', 0, $9, $9, $9)",
        )
        .await?;
    client
        .execute(
            &stmt,
            &[
                &id,
                &c.tenant_id,
                &c.command.as_str(),
                &c.correlation_id,
                &c.actor_user_id,
                &c.created_by_id,
                &c.context,
                &c.payload,
                &now,
            ],
        )
        .await
        .map_err(|e| {
            unique_violation(e, "command_outbox_tenant_correlation_key", || {
                Error::rejected_with(
                    ErrorCode::CorrelationIdTaken,
                    "a command with this correlationId exists in this tenant",
                    json!({ "correlationId": c.correlation_id }),
                )
            })
        })?;
    let notify = client.prepare_cached("SELECT pg_notify($1, '')").await?;
    client.execute(&notify, &[&OUTBOX_CHANNEL]).await?;
    Ok(id)
}

#[tracing::instrument(level = "debug", skip(client))]
pub async fn get_by_correlation(
    client: &impl GenericClient,
    tenant: &str,
    correlation_id: Uuid,
) -> Result<Option<Command>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM command_outbox WHERE tenant_id = $1 AND correlation_id = $2"
    );
    Ok(
        super::all(client, &sql, &[&tenant, &correlation_id], command_from)
            .await?
            .pop(),
    )
}

/// Returns expired leases to PENDING (their process died or stalled).
pub async fn release_expired(client: &impl GenericClient, now: DateTime<Utc>) -> Result<u64> {
    let stmt = client
        .prepare_cached(
            "UPDATE command_outbox SET status = 'PENDING', lease_until = NULL, updated_at = $1, \
               last_error = COALESCE(last_error, 'lease expired') \
             WHERE status = 'PROCESSING' AND lease_until < $1",
        )
        .await?;
    Ok(client.execute(&stmt, &[&now]).await?)
}

/// Claims up to `limit` due PENDING commands: PROCESSING, one more attempt, a lease.
pub async fn claim(
    client: &impl GenericClient,
    limit: i64,
    lease_until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Vec<Command>> {
    let sql = format!(
        "WITH due AS ( \
               SELECT id FROM command_outbox \
               WHERE status = 'PENDING' AND next_attempt_at <= $1 \
               ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
             UPDATE command_outbox o SET status = 'PROCESSING', attempts = o.attempts + 1, \
               lease_until = $3, updated_at = $1 \
             FROM due WHERE o.id = due.id RETURNING {}",
        COLUMNS
            .split(", ")
            .map(|c| format!("o.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    super::all(client, &sql, &[&now, &limit, &lease_until], command_from).await
}

/// Marks a claimed command COMPLETED or FAILED with its result, if this claim
/// still holds it (same attempt, still PROCESSING). False: someone else took over.
pub async fn finish(
    client: &impl GenericClient,
    id: Uuid,
    attempt: i32,
    status: CommandStatus,
    result: &Completed,
    error: Option<&str>,
    now: DateTime<Utc>,
) -> Result<bool> {
    let result = completed_json(result);
    let stmt = client
        .prepare_cached(
            "UPDATE command_outbox SET status = $3, result = $4, last_error = $5, lease_until = NULL, \
               updated_at = $6 \
             WHERE id = $1 AND attempts = $2 AND status = 'PROCESSING'",
        )
        .await?;
    Ok(client
        .execute(
            &stmt,
            &[&id, &attempt, &status.as_str(), &result, &error, &now],
        )
        .await?
        == 1)
}

/// Puts a claimed command back to PENDING for a later attempt.
pub async fn retry_later(
    client: &impl GenericClient,
    id: Uuid,
    attempt: i32,
    error: &str,
    next_attempt_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<bool> {
    let stmt = client
        .prepare_cached(
            "UPDATE command_outbox SET status = 'PENDING', lease_until = NULL, last_error = $3, \
               next_attempt_at = $4, updated_at = $5 \
             WHERE id = $1 AND attempts = $2 AND status = 'PROCESSING'",
        )
        .await?;
    Ok(client
        .execute(&stmt, &[&id, &attempt, &error, &next_attempt_at, &now])
        .await?
        == 1)
}

/// Which command a completion names, within a tenant: the bus names its
/// id, HTTP its correlation id.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    Id(&'a str, Uuid),
    Correlation(&'a str, Uuid),
}

/// Locks one command row for a completion (inside the caller's transaction).
pub async fn lock(client: &impl GenericClient, target: Target<'_>) -> Result<Option<Command>> {
    let rows = match target {
        Target::Id(tenant, id) => {
            let sql = format!(
                "SELECT {COLUMNS} FROM command_outbox WHERE id = $1 AND tenant_id = $2 FOR UPDATE"
            );
            super::all(client, &sql, &[&id, &tenant], command_from).await?
        }
        Target::Correlation(tenant, correlation_id) => {
            let sql = format!(
                "SELECT {COLUMNS} FROM command_outbox WHERE tenant_id = $1 AND correlation_id = $2 \
                 FOR UPDATE"
            );
            super::all(client, &sql, &[&tenant, &correlation_id], command_from).await?
        }
    };
    Ok(rows.into_iter().next())
}

/// The one row an update of a locked command returns.
fn updated(mut rows: Vec<Command>) -> Result<Command> {
    rows.pop()
        .ok_or_else(|| Error::Unexpected(anyhow::anyhow!("a locked command row vanished")))
}

/// A locked command's final status and result.
pub async fn set_final(
    client: &impl GenericClient,
    id: Uuid,
    status: CommandStatus,
    result: &Completed,
    error: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Command> {
    let sql = format!(
        "UPDATE command_outbox SET status = $2, result = $3, last_error = $4, lease_until = NULL, \
           updated_at = $5 WHERE id = $1 RETURNING {COLUMNS}"
    );
    let result = completed_json(result);
    let params: [&(dyn ToSql + Sync); 5] = [&id, &status.as_str(), &result, &error, &now];
    updated(super::all(client, &sql, &params, command_from).await?)
}

/// A locked command back to PENDING, due again at `next_attempt_at`.
pub async fn set_retry(
    client: &impl GenericClient,
    id: Uuid,
    error: &str,
    next_attempt_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Command> {
    let sql = format!(
        "UPDATE command_outbox SET status = 'PENDING', lease_until = NULL, last_error = $2, \
           next_attempt_at = $3, updated_at = $4 WHERE id = $1 RETURNING {COLUMNS}"
    );
    let params: [&(dyn ToSql + Sync); 4] = [&id, &error, &next_attempt_at, &now];
    updated(super::all(client, &sql, &params, command_from).await?)
}

/// Locks the commands among `ids` (in id order, so that two batches cannot
/// deadlock) for a batch of completions.
pub async fn lock_many(client: &impl GenericClient, ids: &[Uuid]) -> Result<Vec<Command>> {
    let sql =
        format!("SELECT {COLUMNS} FROM command_outbox WHERE id = ANY($1) ORDER BY id FOR UPDATE");
    super::all(client, &sql, &[&ids], command_from).await
}

/// A final status for a locked command (`set_final_many`).
pub struct FinalRow<'a> {
    pub id: Uuid,
    pub status: CommandStatus,
    pub result: &'a Completed,
    pub error: Option<&'a str>,
}

/// Locked commands' final statuses and results, in one statement.
pub async fn set_final_many(
    client: &impl GenericClient,
    rows: &[FinalRow<'_>],
    now: DateTime<Utc>,
) -> Result<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let statuses: Vec<&str> = rows.iter().map(|r| r.status.as_str()).collect();
    let results: Vec<Value> = rows.iter().map(|r| completed_json(r.result)).collect();
    let errors: Vec<Option<&str>> = rows.iter().map(|r| r.error).collect();
    let stmt = client
        .prepare_cached(
            "UPDATE command_outbox o SET status = u.status, result = u.result, \
               last_error = u.error, lease_until = NULL, updated_at = $5 \
             FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::text[]) AS u(id, status, result, error) \
             WHERE o.id = u.id",
        )
        .await?;
    Ok(client
        .execute(&stmt, &[&ids, &statuses, &results, &errors, &now])
        .await?)
}

/// Locked commands back to PENDING, each due again at its own time.
pub async fn set_retry_many(
    client: &impl GenericClient,
    rows: &[(Uuid, String, DateTime<Utc>)],
    now: DateTime<Utc>,
) -> Result<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.0).collect();
    let errors: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    let nexts: Vec<DateTime<Utc>> = rows.iter().map(|r| r.2).collect();
    let stmt = client
        .prepare_cached(
            "UPDATE command_outbox o SET status = 'PENDING', lease_until = NULL, \
               last_error = u.error, next_attempt_at = u.next, updated_at = $4 \
             FROM unnest($1::uuid[], $2::text[], $3::timestamptz[]) AS u(id, error, next) \
             WHERE o.id = u.id",
        )
        .await?;
    Ok(client
        .execute(&stmt, &[&ids, &errors, &nexts, &now])
        .await?)
}

/// Locks up to `limit` due PENDING commands (skipping rows other processes
/// hold), to be published before the transaction ends.
pub async fn lock_due(
    client: &impl GenericClient,
    limit: i64,
    now: DateTime<Utc>,
) -> Result<Vec<Command>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM command_outbox WHERE status = 'PENDING' AND next_attempt_at <= $1 \
         ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED"
    );
    super::all(client, &sql, &[&now, &limit], command_from).await
}

/// Locks up to `limit` PROCESSING commands whose deadline has passed.
pub async fn lock_expired(
    client: &impl GenericClient,
    limit: i64,
    now: DateTime<Utc>,
) -> Result<Vec<Command>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM command_outbox WHERE status = 'PROCESSING' AND lease_until < $1 \
         ORDER BY lease_until LIMIT $2 FOR UPDATE SKIP LOCKED"
    );
    super::all(client, &sql, &[&now, &limit], command_from).await
}

/// Locked commands that JetStream acknowledged: PROCESSING, one more
/// attempt, answered by `deadline`.
pub async fn mark_published(
    client: &impl GenericClient,
    ids: &[Uuid],
    deadline: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<u64> {
    let stmt = client
        .prepare_cached(
            "UPDATE command_outbox SET status = 'PROCESSING', attempts = attempts + 1, \
               lease_until = $2, updated_at = $3 WHERE id = ANY($1)",
        )
        .await?;
    Ok(client.execute(&stmt, &[&ids, &deadline, &now]).await?)
}

/// Locked commands whose publish failed: still PENDING (not an attempt),
/// due again at `next_attempt_at`.
pub async fn defer(
    client: &impl GenericClient,
    ids: &[Uuid],
    error: &str,
    next_attempt_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<u64> {
    let stmt = client
        .prepare_cached(
            "UPDATE command_outbox SET last_error = $2, next_attempt_at = $3, updated_at = $4 \
             WHERE id = ANY($1)",
        )
        .await?;
    Ok(client
        .execute(&stmt, &[&ids, &error, &next_attempt_at, &now])
        .await?)
}

/// Commands by status, and the age of the oldest PENDING one in seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct OutboxDepth {
    pub pending: i64,
    pub processing: i64,
    pub failed: i64,
    pub oldest_pending_secs: Option<f64>,
}

/// Counts by status and the age of the oldest PENDING command (metrics).
pub async fn stats(client: &impl GenericClient) -> Result<OutboxDepth> {
    let stmt = client
        .prepare_cached(
            "SELECT count(*) FILTER (WHERE status = 'PENDING'), \
                    count(*) FILTER (WHERE status = 'PROCESSING'), \
                    count(*) FILTER (WHERE status = 'FAILED'), \
                    EXTRACT(EPOCH FROM now() - min(created_at) FILTER (WHERE status = 'PENDING'))::float8 \
             FROM command_outbox",
        )
        .await?;
    let row = client.query_one(&stmt, &[]).await?;
    Ok(OutboxDepth {
        pending: row.get(0),
        processing: row.get(1),
        failed: row.get(2),
        oldest_pending_secs: row.get(3),
    })
}
