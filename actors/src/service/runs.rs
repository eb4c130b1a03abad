//! The door to runs and their variables: start is one transaction here;
//! upserts and finish go through the run's RunActor; reads answer from the
//! store.

use serde_json::json;
use uuid::Uuid;

use crate::domain::run::run_event;
use crate::domain::script::archived;
use crate::domain::{
    ActorId, Error, ErrorCode, NewRun, Page, Result, Run, RunStatus, RunVariable, ScriptStatus,
    TenantId, VarUpsert, Window,
};
use crate::run::{FinishRun, RunActors, UpsertVars, Upserted};
use crate::store::idempotency::Idem;
pub use crate::store::runs::RunFilter;
use crate::store::{self, events, runs as sql, scripts, Db};
use crate::workers::var_writer::{VarWriter, WriterStats};

#[derive(Clone)]
pub struct Runs {
    pub(crate) db: Db,
    pub(crate) actors: RunActors,
    pub(crate) writer: VarWriter,
}

impl Runs {
    /// `POST /runs`: a RUNNING run of the given (or the active) version, and
    /// its `Run.Started.v1` event, in one transaction.
    #[tracing::instrument(level = "debug", skip_all, fields(tenant = %tenant, script = %new.script_id))]
    pub async fn start(
        &self,
        tenant: &TenantId,
        actor: &ActorId,
        new: NewRun,
        idem: Option<&Idem<Run>>,
    ) -> Result<Run> {
        let mut client = self.db.write().await?;
        let tx = client.transaction().await?;
        let script = scripts::get_script(&tx, tenant.as_str(), new.script_id)
            .await?
            .ok_or_else(|| Error::not_found("script"))?;
        if script.status == ScriptStatus::Archived {
            return Err(archived());
        }
        let version = match (new.version, script.active_version_id) {
            (Some(v), _) => scripts::get_version(&tx, script.id, v, None).await?,
            (None, Some(active)) => scripts::get_version_by_id(&tx, active).await?,
            (None, None) => {
                return Err(Error::rejected(
                    ErrorCode::NoActiveVersion,
                    "the script has no active version; publish one or give a version",
                ))
            }
        }
        .ok_or_else(|| Error::not_found("version"))?
        .version;
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
            stream_seq: 0,
            last_activity_at: now,
        };
        sql::insert_run(&tx, &run).await?;
        let started = run_event(
            &run,
            "Run.Started.v1",
            json!({ "runId": run.id, "scriptId": run.script_id, "version": run.version }),
        );
        events::append(&tx, &[started], run.started_at).await?;
        if let Some(idem) = idem {
            idem.complete(&tx, &run).await?;
        }
        tx.commit().await?;
        Ok(run)
    }

    /// Upserts variables (distinct keys); answers after the commit. `seq`:
    /// a runner-stream frame's, committed with its rows; a frame at or below
    /// the run's committed `seq` is answered as a resend (`duplicate`).
    pub async fn upsert(
        &self,
        id: Uuid,
        tenant: TenantId,
        items: Vec<VarUpsert>,
        seq: Option<i64>,
    ) -> Result<Upserted> {
        self.actors.ask(id, UpsertVars { tenant, items, seq }).await
    }

    /// Finishes a run after its queued upserts (`seq`: a runner-stream
    /// `finish` frame's).
    pub async fn finish(
        &self,
        id: Uuid,
        tenant: TenantId,
        status: RunStatus,
        seq: Option<i64>,
    ) -> Result<Run> {
        let finish = FinishRun {
            tenant,
            status,
            seq,
        };
        self.actors.ask(id, finish).await
    }

    /// The run a runner stream opens on: the tenant's, RUNNING (else
    /// `RUN_FINISHED`).
    pub async fn stream_target(&self, tenant: &TenantId, id: Uuid) -> Result<Run> {
        let client = self.db.read().await?;
        let run = sql::get_run(&client, id)
            .await?
            .filter(|r| r.tenant_id == tenant.as_str())
            .ok_or_else(|| Error::not_found("run"))?;
        if run.status != RunStatus::Running {
            return Err(crate::domain::run::run_finished());
        }
        Ok(run)
    }

    /// An open stream's ping: the run counts as active; false when it is not
    /// RUNNING any more.
    pub async fn touch(&self, id: Uuid) -> Result<bool> {
        let client = self.db.write().await?;
        sql::touch_run(&client, id, store::now_ms()).await
    }

    /// A run of the tenant with its variables sorted by key.
    pub async fn get(&self, tenant: &TenantId, id: Uuid) -> Result<(Run, Vec<RunVariable>)> {
        let client = self.db.read().await?;
        let run = sql::get_run(&client, id)
            .await?
            .filter(|r| r.tenant_id == tenant.as_str())
            .ok_or_else(|| Error::not_found("run"))?;
        let vars = sql::list_vars(&client, id).await?;
        Ok((run, vars))
    }

    pub async fn list(
        &self,
        tenant: &TenantId,
        filter: &RunFilter,
        window: Window,
    ) -> Result<Page<Run>> {
        let client = self.db.read().await?;
        sql::list_runs(&client, tenant.as_str(), filter, window).await
    }

    /// The actors of this door (admin view, test hooks).
    pub fn actors(&self) -> &RunActors {
        &self.actors
    }

    pub fn writer_stats(&self) -> &WriterStats {
        self.writer.stats()
    }
}
