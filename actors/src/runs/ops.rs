//! The transactions behind runs: start and finish (variable upserts are the
//! RunActor's group commit).

use deadpool_postgres::Pool;
use serde_json::json;
use uuid::Uuid;

use crate::domain::{ActorId, TenantId};
use crate::error::{Error, ErrorCode, Result};
use crate::events::NewEvent;
use crate::runs::model::{NewRun, Run, RunStatus};
use crate::scripts::model::ScriptStatus;
use crate::store::{self, events, runs as sql, scripts};

pub fn run_event(run: &Run, name: &str, payload: serde_json::Value) -> NewEvent {
    NewEvent {
        tenant_id: run.tenant_id.clone(),
        name: name.to_string(),
        correlation_id: Some(run.id.to_string()),
        success: true,
        payload,
    }
}

/// `POST /runs`: a RUNNING run of the given (or the active) version, and its
/// `Run.Started.v1` event, in one transaction.
pub async fn start_run(
    pool: &Pool,
    tenant: &TenantId,
    actor: &ActorId,
    new: NewRun,
    idem: Option<&crate::idempotency::Idem<Run>>,
) -> Result<Run> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let script = scripts::get_script(&tx, tenant.as_str(), new.script_id)
        .await?
        .ok_or_else(|| Error::not_found("script"))?;
    if script.status == ScriptStatus::Archived {
        return Err(Error::rejected(
            ErrorCode::ScriptArchived,
            "the script is archived",
        ));
    }
    let version = match new.version {
        Some(v) => {
            scripts::get_version(&tx, script.id, v, None)
                .await?
                .ok_or_else(|| Error::not_found("version"))?
                .version
        }
        None => {
            let active = script.active_version_id.ok_or_else(|| {
                Error::rejected(
                    ErrorCode::NoActiveVersion,
                    "the script has no active version; publish one or give a version",
                )
            })?;
            scripts::get_version_by_id(&tx, active)
                .await?
                .ok_or_else(|| Error::not_found("version"))?
                .version
        }
    };
    let now = store::now_ms();
    let run = Run {
        id: Uuid::now_v7(),
        tenant_id: tenant.to_string(),
        script_id: script.id,
        version,
        started_by_id: Some(new.started_by_id.unwrap_or_else(|| actor.to_string())),
        connector_type: new.connector_type,
        connector_key: new.connector_key,
        status: RunStatus::Running,
        started_at: now,
        ended_at: None,
    };
    sql::insert_run(&tx, &run).await?;
    let started = run_event(
        &run,
        "Run.Started.v1",
        json!({ "runId": run.id, "scriptId": run.script_id, "version": run.version }),
    );
    events::append(&tx, &[started], now).await?;
    if let Some(idem) = idem {
        idem.complete(&tx, &run).await?;
    }
    tx.commit().await?;
    Ok(run)
}

pub fn run_finished() -> Error {
    Error::rejected(ErrorCode::RunFinished, "the run has finished")
}

/// Finish: status, endedAt and `Run.Finished.v1` in one transaction. The
/// run's actor calls it only after the run's earlier events are appended, so
/// the event follows them in commit order.
pub async fn finish_run(
    pool: &Pool,
    tenant: &TenantId,
    id: Uuid,
    status: RunStatus,
) -> Result<Run> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let run = sql::lock_run(&tx, id)
        .await?
        .filter(|r| r.tenant_id == tenant.as_str())
        .ok_or_else(|| Error::not_found("run"))?;
    if run.status != RunStatus::Running {
        return Err(run_finished());
    }
    let now = store::now_ms();
    let run = sql::finish_run(&tx, id, status, now).await?;
    let finished = run_event(
        &run,
        "Run.Finished.v1",
        json!({ "runId": run.id, "status": run.status }),
    );
    events::append(&tx, &[finished], now).await?;
    tx.commit().await?;
    Ok(run)
}
