//! SQL for `command_outbox`: insert (announced with NOTIFY), claim with
//! `FOR UPDATE SKIP LOCKED`, and the outcomes.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::{json, Value};
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
