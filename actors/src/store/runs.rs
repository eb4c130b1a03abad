//! SQL for script_runs and run_variables.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::Value;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::domain::{Key, Page, Result, Run, RunStatus, RunVariable, VarUpsert, VarValue, Window};

const RUN_COLUMNS: &str = "id, tenant_id, script_id, version, started_by_id, connector_type, \
     connector_key, status, started_at, ended_at";

fn run_from(row: &Row) -> Run {
    Run {
        id: row.get("id"),
        tenant_id: row.get("tenant_id"),
        script_id: row.get("script_id"),
        version: row.get("version"),
        started_by_id: row.get("started_by_id"),
        connector_type: row.get("connector_type"),
        connector_key: row.get("connector_key"),
        status: RunStatus::parse(row.get("status")).unwrap_or(RunStatus::Running),
        started_at: row.get("started_at"),
        ended_at: row.get("ended_at"),
    }
}

fn var_from(row: &Row) -> RunVariable {
    RunVariable {
        key: row.get("key"),
        str_val: row.get("str_val"),
        num_val: row.get("num_val"),
        bool_val: row.get("bool_val"),
        json_val: row.get("json_val"),
        updated_at: row.get("updated_at"),
    }
}

#[tracing::instrument(level = "debug", skip_all, fields(run = %r.id, tenant = %r.tenant_id))]
pub async fn insert_run(client: &impl GenericClient, r: &Run) -> Result<()> {
    let stmt = client
        .prepare_cached(
            "INSERT INTO script_runs (id, tenant_id, script_id, version, started_by_id, connector_type, \
             connector_key, status, started_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .await?;
    client
        .execute(
            &stmt,
            &[
                &r.id,
                &r.tenant_id,
                &r.script_id,
                &r.version,
                &r.started_by_id,
                &r.connector_type,
                &r.connector_key,
                &r.status.as_str(),
                &r.started_at,
            ],
        )
        .await?;
    Ok(())
}

/// A run by id (any tenant: callers check).
#[tracing::instrument(level = "debug", skip(client))]
pub async fn get_run(client: &impl GenericClient, id: Uuid) -> Result<Option<Run>> {
    let sql = format!("SELECT {RUN_COLUMNS} FROM script_runs WHERE id = $1");
    Ok(super::all(client, &sql, &[&id], run_from).await?.pop())
}

/// A run, row-locked until the transaction ends (finish).
pub async fn lock_run(client: &impl GenericClient, id: Uuid) -> Result<Option<Run>> {
    let sql = format!("SELECT {RUN_COLUMNS} FROM script_runs WHERE id = $1 FOR UPDATE");
    Ok(super::all(client, &sql, &[&id], run_from).await?.pop())
}

pub async fn finish_run(
    client: &impl GenericClient,
    id: Uuid,
    status: RunStatus,
    now: DateTime<Utc>,
) -> Result<Run> {
    let stmt = client
        .prepare_cached(&format!(
            "UPDATE script_runs SET status = $2, ended_at = $3 WHERE id = $1 RETURNING {RUN_COLUMNS}"
        ))
        .await?;
    Ok(run_from(
        &client
            .query_one(&stmt, &[&id, &status.as_str(), &now])
            .await?,
    ))
}

/// Upserts the variables of one or more runs in ONE statement, each run's
/// rows only while that run is RUNNING (its row is share-locked against a
/// concurrent finish until the statement commits). `batches` holds distinct
/// runs, each with distinct keys. Rows are written in (run, key) order, so
/// two processes writing the same run cannot deadlock on them. Returns the
/// stored rows by run; a run with items that is absent was not RUNNING.
#[tracing::instrument(level = "debug", skip_all, fields(runs = batches.len()))]
pub async fn upsert_vars(
    client: &impl GenericClient,
    batches: &[(Uuid, &[VarUpsert])],
    now: DateTime<Utc>,
) -> Result<HashMap<Uuid, Vec<RunVariable>>> {
    let stmt = client
        .prepare_cached(
            "WITH run AS (SELECT id FROM script_runs WHERE id = ANY($1::uuid[]) AND status = 'RUNNING' \
               ORDER BY id FOR SHARE) \
             INSERT INTO run_variables (run_id, key, str_val, num_val, bool_val, json_val, updated_at) \
             SELECT u.run_id, u.key, u.s, u.n, u.b, u.j, $2 \
             FROM UNNEST($3::uuid[], $4::text[], $5::text[], $6::float8[], $7::bool[], $8::jsonb[]) \
               WITH ORDINALITY AS u(run_id, key, s, n, b, j, ord) \
             WHERE u.run_id IN (SELECT id FROM run) \
             ORDER BY u.ord \
             ON CONFLICT (run_id, key) DO UPDATE SET str_val = EXCLUDED.str_val, num_val = EXCLUDED.num_val, \
               bool_val = EXCLUDED.bool_val, json_val = EXCLUDED.json_val, updated_at = EXCLUDED.updated_at \
             RETURNING run_id, key, str_val, num_val, bool_val, json_val, updated_at",
        )
        .await?;
    let mut rows: Vec<(Uuid, &VarUpsert)> = batches
        .iter()
        .flat_map(|(run, items)| items.iter().map(move |i| (*run, i)))
        .collect();
    rows.sort_unstable_by(|a, b| (a.0, a.1.key.as_str()).cmp(&(b.0, b.1.key.as_str())));
    let mut runs: Vec<Uuid> = batches.iter().map(|(run, _)| *run).collect();
    runs.sort_unstable();
    let n = rows.len();
    let mut run_ids: Vec<Uuid> = Vec::with_capacity(n);
    let mut keys: Vec<&str> = Vec::with_capacity(n);
    let mut strs: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut nums: Vec<Option<f64>> = Vec::with_capacity(n);
    let mut bools: Vec<Option<bool>> = Vec::with_capacity(n);
    let mut jsons: Vec<Option<&Value>> = Vec::with_capacity(n);
    for (run, i) in rows {
        run_ids.push(run);
        keys.push(i.key.as_str());
        strs.push(match &i.value {
            VarValue::Str(s) => Some(s.as_str()),
            _ => None,
        });
        nums.push(match i.value {
            VarValue::Num(n) => Some(n),
            _ => None,
        });
        bools.push(match i.value {
            VarValue::Bool(b) => Some(b),
            _ => None,
        });
        jsons.push(match &i.value {
            VarValue::Json(j) => Some(j),
            _ => None,
        });
    }
    let stored = client
        .query(
            &stmt,
            &[&runs, &now, &run_ids, &keys, &strs, &nums, &bools, &jsons],
        )
        .await?;
    let mut by_run: HashMap<Uuid, Vec<RunVariable>> = HashMap::new();
    for row in &stored {
        by_run
            .entry(row.get("run_id"))
            .or_default()
            .push(var_from(row));
    }
    Ok(by_run)
}

pub async fn list_vars(client: &impl GenericClient, run_id: Uuid) -> Result<Vec<RunVariable>> {
    let stmt = client
        .prepare_cached(
            "SELECT key, str_val, num_val, bool_val, json_val, updated_at FROM run_variables \
             WHERE run_id = $1 ORDER BY key",
        )
        .await?;
    Ok(client
        .query(&stmt, &[&run_id])
        .await?
        .iter()
        .map(var_from)
        .collect())
}

/// Filters of `GET /runs`.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub script_id: Option<Uuid>,
    pub status: Option<RunStatus>,
    /// Inclusive.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive.
    pub to: Option<DateTime<Utc>>,
}

pub async fn list_runs(
    client: &impl GenericClient,
    tenant: &str,
    f: &RunFilter,
    window: Window,
) -> Result<Page<Run>> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {RUN_COLUMNS} FROM script_runs WHERE tenant_id = $1 \
               AND ($2::uuid IS NULL OR script_id = $2) \
               AND ($3::text IS NULL OR status = $3) \
               AND ($4::timestamptz IS NULL OR started_at >= $4) \
               AND ($5::timestamptz IS NULL OR started_at < $5) \
               AND (started_at, id) < ($6, $7) \
             ORDER BY started_at DESC, id DESC LIMIT $8"
        ))
        .await?;
    let (t, id) = window.after_time().unwrap_or_else(super::keyset_start);
    let rows = client
        .query(
            &stmt,
            &[
                &tenant,
                &f.script_id,
                &f.status.map(|s| s.as_str()),
                &f.from,
                &f.to,
                &t,
                &id,
                &window.fetch(),
            ],
        )
        .await?;
    let rows = rows.iter().map(run_from).collect();
    Ok(window.page(rows, |r: &Run| Key::time(r.started_at, r.id)))
}
