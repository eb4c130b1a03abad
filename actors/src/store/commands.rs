//! SQL for `command_outbox`: insert (announced with NOTIFY), claim with
//! `FOR UPDATE SKIP LOCKED`, and the outcomes.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::Value;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::error::Result;
use crate::outbox::model::{Command, CommandStatus, NewCommand};

/// NOTIFY channel announcing a new PENDING command.
pub const OUTBOX_CHANNEL: &str = "scriptd_outbox";

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
        result: row.get("result"),
        last_error: row.get("last_error"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    }
}

/// Inserts a PENDING command and announces it (the NOTIFY is delivered at commit).
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
                &c.command,
                &c.correlation_id,
                &c.actor_user_id,
                &c.created_by_id,
                &c.context,
                &c.payload,
                &now,
            ],
        )
        .await?;
    let notify = client.prepare_cached("SELECT pg_notify($1, '')").await?;
    client.execute(&notify, &[&OUTBOX_CHANNEL]).await?;
    Ok(id)
}

pub async fn get_by_correlation(
    client: &impl GenericClient,
    tenant: &str,
    correlation_id: Uuid,
) -> Result<Option<Command>> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM command_outbox WHERE tenant_id = $1 AND correlation_id = $2"
        ))
        .await?;
    Ok(client
        .query_opt(&stmt, &[&tenant, &correlation_id])
        .await?
        .as_ref()
        .map(command_from))
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
    let stmt = client
        .prepare_cached(&format!(
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
        ))
        .await?;
    Ok(client
        .query(&stmt, &[&now, &limit, &lease_until])
        .await?
        .iter()
        .map(command_from)
        .collect())
}

/// Marks a claimed command COMPLETED or FAILED with its result, if this claim
/// still holds it (same attempt, still PROCESSING). False: someone else took over.
pub async fn finish(
    client: &impl GenericClient,
    id: Uuid,
    attempt: i32,
    status: CommandStatus,
    result: &Value,
    error: Option<&str>,
    now: DateTime<Utc>,
) -> Result<bool> {
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
            &[&id, &attempt, &status.as_str(), result, &error, &now],
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

/// Counts by status and the age of the oldest PENDING command (metrics).
pub async fn stats(client: &impl GenericClient) -> Result<(i64, i64, i64, Option<f64>)> {
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
    Ok((row.get(0), row.get(1), row.get(2), row.get(3)))
}
