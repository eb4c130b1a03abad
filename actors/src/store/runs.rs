//! SQL for script_runs and run_variables.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::Value;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::domain::{Key, Page, Result, Run, RunStatus, RunVariable, VarUpsert, VarValue, Window};

const RUN_COLUMNS: &str = "id, tenant_id, script_id, version, started_by_id, connector_type, \
     connector_key, status, started_at, ended_at, stream_seq, last_activity_at";

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
        stream_seq: row.get("stream_seq"),
        last_activity_at: row.get("last_activity_at"),
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
             connector_key, status, started_at, last_activity_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
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

/// Finishes a run; a stream `finish` frame's `seq` becomes its `stream_seq`.
pub async fn finish_run(
    client: &impl GenericClient,
    id: Uuid,
    status: RunStatus,
    seq: Option<i64>,
    now: DateTime<Utc>,
) -> Result<Run> {
    let stmt = client
        .prepare_cached(&format!(
            "UPDATE script_runs SET status = $2, ended_at = $3, last_activity_at = $3, \
               stream_seq = GREATEST(stream_seq, COALESCE($4::int8, 0)) WHERE id = $1 RETURNING {RUN_COLUMNS}"
        ))
        .await?;
    Ok(run_from(
        &client
            .query_one(&stmt, &[&id, &status.as_str(), &now, &seq])
            .await?,
    ))
}

/// One run's part of a variable write: distinct keys, and for runner-stream
/// frames the first and last `seq` they carry.
#[derive(Debug, Clone, Copy)]
pub struct RunBatch<'a> {
    pub run: Uuid,
    pub items: &'a [VarUpsert],
    pub seqs: Option<(i64, i64)>,
}

/// What became of one run's part of a variable write.
#[derive(Debug, Clone, PartialEq)]
pub enum RunWrite {
    /// Written: the stored rows.
    Stored(Vec<RunVariable>),
    /// Nothing written: the run is not RUNNING (or does not exist).
    Finished,
    /// Nothing written: the run's committed stream `seq` is already at or
    /// above the batch's first `seq` (another connection, maybe in another
    /// process, committed it).
    Behind(i64),
}

/// The statement of `upsert_vars`.
const UPSERT_VARS: &str = "WITH want AS (SELECT * FROM UNNEST($1::uuid[], $9::int8[], $10::int8[]) AS w(id, first_seq, last_seq)), \
             run AS (SELECT r.id, r.status, r.stream_seq, r.last_activity_at, w.last_seq, \
                 r.status = 'RUNNING' AND (w.first_seq IS NULL OR r.stream_seq < w.first_seq) AS ok \
               FROM script_runs r JOIN want w ON w.id = r.id ORDER BY r.id FOR NO KEY UPDATE OF r), \
             bump AS (UPDATE script_runs r SET stream_seq = COALESCE(run.last_seq, r.stream_seq), last_activity_at = $2 \
               FROM run WHERE r.id = run.id AND run.ok \
                 AND (run.last_seq IS NOT NULL OR run.last_activity_at < $2::timestamptz - interval '1 second')), \
             ins AS (INSERT INTO run_variables (run_id, key, str_val, num_val, bool_val, json_val, updated_at) \
               SELECT u.run_id, u.key, u.s, u.n, u.b, u.j, $2 \
               FROM UNNEST($3::uuid[], $4::text[], $5::text[], $6::float8[], $7::bool[], $8::jsonb[]) \
                 WITH ORDINALITY AS u(run_id, key, s, n, b, j, ord) \
               WHERE u.run_id IN (SELECT id FROM run WHERE ok) \
               ORDER BY u.ord \
               ON CONFLICT (run_id, key) DO UPDATE SET str_val = EXCLUDED.str_val, num_val = EXCLUDED.num_val, \
                 bool_val = EXCLUDED.bool_val, json_val = EXCLUDED.json_val, updated_at = EXCLUDED.updated_at \
               RETURNING run_id, key, str_val, num_val, bool_val, json_val, updated_at) \
             SELECT run_id, key, str_val, num_val, bool_val, json_val, updated_at, NULL::int8 AS behind FROM ins \
             UNION ALL \
             SELECT id, NULL, NULL, NULL, NULL, NULL, NULL, CASE WHEN status = 'RUNNING' THEN stream_seq END \
             FROM run WHERE NOT ok";

/// The variable rows of a write as the statement's arrays.
struct Columns<'a> {
    run_ids: Vec<Uuid>,
    keys: Vec<&'a str>,
    strs: Vec<Option<&'a str>>,
    nums: Vec<Option<f64>>,
    bools: Vec<Option<bool>>,
    jsons: Vec<Option<&'a Value>>,
}

impl<'a> Columns<'a> {
    fn of(rows: Vec<(Uuid, &'a VarUpsert)>) -> Self {
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
        Columns {
            run_ids,
            keys,
            strs,
            nums,
            bools,
            jsons,
        }
    }
}

/// Upserts the variables of one or more runs in ONE statement, each run's
/// rows only while that run is RUNNING and, for stream frames, while its
/// committed `seq` is below the batch's first: the run row is locked against
/// a concurrent finish until the statement commits, and its `stream_seq`
/// (and, at most once a second, `last_activity_at`) is updated in the same
/// statement. `batches` holds distinct runs, each with distinct keys. Run rows
/// are locked in id order and variable rows written in (run, key) order, so
/// two processes writing the same runs cannot deadlock on them.
#[tracing::instrument(level = "debug", skip_all, fields(runs = batches.len()))]
pub async fn upsert_vars(
    client: &impl GenericClient,
    batches: &[RunBatch<'_>],
    now: DateTime<Utc>,
) -> Result<HashMap<Uuid, RunWrite>> {
    let stmt = client.prepare_cached(UPSERT_VARS).await?;
    let mut rows: Vec<(Uuid, &VarUpsert)> = batches
        .iter()
        .flat_map(|b| b.items.iter().map(move |i| (b.run, i)))
        .collect();
    rows.sort_unstable_by(|a, b| (a.0, a.1.key.as_str()).cmp(&(b.0, b.1.key.as_str())));
    let runs: Vec<Uuid> = batches.iter().map(|b| b.run).collect();
    let firsts: Vec<Option<i64>> = batches.iter().map(|b| b.seqs.map(|s| s.0)).collect();
    let lasts: Vec<Option<i64>> = batches.iter().map(|b| b.seqs.map(|s| s.1)).collect();
    let c = Columns::of(rows);
    let stored = client
        .query(
            &stmt,
            &[
                &runs, &now, &c.run_ids, &c.keys, &c.strs, &c.nums, &c.bools, &c.jsons, &firsts,
                &lasts,
            ],
        )
        .await?;
    let mut by_run: HashMap<Uuid, RunWrite> = HashMap::new();
    for row in &stored {
        let run: Uuid = row.get("run_id");
        let key: Option<String> = row.get("key");
        if key.is_none() {
            let outcome = match row.get::<_, Option<i64>>("behind") {
                Some(seq) => RunWrite::Behind(seq),
                None => RunWrite::Finished,
            };
            by_run.insert(run, outcome);
            continue;
        }
        let entry = by_run
            .entry(run)
            .or_insert_with(|| RunWrite::Stored(Vec::new()));
        if let RunWrite::Stored(vars) = entry {
            vars.push(var_from(row));
        }
    }
    for b in batches {
        by_run.entry(b.run).or_insert(RunWrite::Finished);
    }
    Ok(by_run)
}

/// Marks a RUNNING run active now (an open runner stream's ping); false when
/// it is not RUNNING.
pub async fn touch_run(client: &impl GenericClient, id: Uuid, now: DateTime<Utc>) -> Result<bool> {
    let stmt = client
        .prepare_cached(
            "UPDATE script_runs SET last_activity_at = $2 WHERE id = $1 AND status = 'RUNNING'",
        )
        .await?;
    Ok(client.execute(&stmt, &[&id, &now]).await? == 1)
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
