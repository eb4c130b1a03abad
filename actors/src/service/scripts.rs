//! The door to scripts, their versions and audit trail: reads answer from
//! the store; every mutation of an existing script goes through its
//! ScriptActor. Creating a script is one transaction here (no actor owns an
//! id that does not exist yet).

use std::sync::Arc;

use uuid::Uuid;

use crate::domain::history;
use crate::domain::{
    ActorId, AuditAction, AuditEntry, Error, NewScript, Page, PatchRequest, PublishRequest, Result,
    Script, ScriptStatus, ScriptView, TenantId, Version, VersionRequest, VersionSummary, Window,
};
use crate::read_cache::{CacheStats, ReadCache};
use crate::script::{CreateVersion, ScriptActors};
use crate::store::idempotency::Idem;
pub use crate::store::scripts::ScriptFilter;
use crate::store::{self, scripts as sql, Db};

#[derive(Clone)]
pub struct Scripts {
    pub(crate) db: Db,
    pub(crate) actors: ScriptActors,
    /// What the script actors keep for reads (see `read_cache`).
    pub(crate) cache: Arc<ReadCache>,
}

impl Scripts {
    /// `POST /scripts`: the row and its CREATE audit row (version 0).
    #[tracing::instrument(level = "debug", skip_all, fields(tenant = %tenant))]
    pub async fn create(
        &self,
        tenant: &TenantId,
        actor: &ActorId,
        new: NewScript,
        idem: Option<&Idem<Script>>,
    ) -> Result<Script> {
        let now = store::now_ms();
        let script = Script {
            id: Uuid::now_v7(),
            tenant_id: tenant.to_string(),
            name: new.name,
            slug: new.slug.into_string(),
            description: new.description,
            status: ScriptStatus::Draft,
            active_version_id: None,
            latest_version: 0,
            labels: new.labels,
            intents: new.intents,
            language_codes: new.language_codes,
            embedding_key: new.embedding_key,
            created_by_id: actor.to_string(),
            updated_by_id: actor.to_string(),
            created_at: now,
            updated_at: now,
            revision: 1,
        };
        let mut client = self.db.write().await?;
        let tx = client.transaction().await?;
        sql::insert_script(&tx, &script).await?;
        let audit = sql::AuditRow {
            id: Uuid::now_v7(),
            action: AuditAction::Create,
            version: 0,
            actor_id: actor.as_str(),
            diff_json: None,
            note: None,
        };
        sql::insert_audits(&tx, script.id, tenant.as_str(), &[audit], now).await?;
        if let Some(idem) = idem {
            idem.complete(&tx, &script).await?;
        }
        tx.commit().await?;
        Ok(script)
    }

    /// A script with its active version: from memory when cached, else in
    /// one round trip (and cached).
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn get(&self, tenant: &TenantId, id: Uuid) -> Result<ScriptView> {
        Ok((*self.view(tenant, id).await?).clone())
    }

    /// The cached view of the tenant's script, loaded on a miss.
    async fn view(&self, tenant: &TenantId, id: Uuid) -> Result<Arc<ScriptView>> {
        if let Some(view) = self.cache.view(id) {
            return match view.script.tenant_id == tenant.as_str() {
                true => Ok(view),
                false => Err(Error::not_found("script")),
            };
        }
        let epoch = self.cache.epoch();
        let client = self.db.read().await?;
        // Loaded whatever the tenant asking, so that another tenant's miss
        // cannot evict or skip what it may not see; answered only to its own.
        let (script, active_version) = sql::load_script_view(&client, id)
            .await?
            .ok_or_else(|| Error::not_found("script"))?;
        let view = Arc::new(ScriptView {
            script,
            active_version,
        });
        self.cache.insert_view(view.clone(), epoch);
        if view.script.tenant_id != tenant.as_str() {
            return Err(Error::not_found("script"));
        }
        Ok(view)
    }

    /// After a write of this process committed: the new view is cached
    /// before the writer hears (read-your-writes).
    fn written(&self, view: &ScriptView) {
        self.cache.insert_view(view.clone(), self.cache.epoch());
    }

    pub fn cache_stats(&self) -> &CacheStats {
        &self.cache.stats
    }

    pub async fn list(
        &self,
        tenant: &TenantId,
        filter: &ScriptFilter,
        window: Window,
    ) -> Result<Page<Script>> {
        let client = self.db.read().await?;
        sql::list_scripts(&client, tenant.as_str(), filter, window).await
    }

    pub async fn patch(&self, id: Uuid, req: PatchRequest) -> Result<ScriptView> {
        let view = self.actors.ask(id, req).await?;
        self.written(&view);
        Ok(view)
    }

    pub async fn create_version(
        &self,
        id: Uuid,
        req: VersionRequest,
        idem: Option<Idem<Version>>,
    ) -> Result<Version> {
        let (version, revision) = self.actors.ask(id, CreateVersion { req, idem }).await?;
        self.cache.invalidate(id, revision);
        Ok(version)
    }

    pub async fn publish(&self, id: Uuid, req: PublishRequest) -> Result<ScriptView> {
        let view = self.actors.ask(id, req).await?;
        self.written(&view);
        Ok(view)
    }

    /// A read connection and the tenant's script (404 when it is not one).
    async fn script_of(
        &self,
        tenant: &TenantId,
        id: Uuid,
    ) -> Result<(deadpool_postgres::Object, Script)> {
        let client = self.db.read().await?;
        let script = sql::get_script(&client, tenant.as_str(), id)
            .await?
            .ok_or_else(|| Error::not_found("script"))?;
        Ok((client, script))
    }

    /// A script's versions, highest first.
    pub async fn versions(
        &self,
        tenant: &TenantId,
        id: Uuid,
        window: Window,
    ) -> Result<Page<VersionSummary>> {
        let (client, script) = self.script_of(tenant, id).await?;
        sql::list_versions(&client, id, script.active_version_id, window).await
    }

    /// A version: from memory when its script's view is cached at the
    /// revision it was read at (`isActive` / `isPublished` follow the
    /// script's revision), else read and cached.
    pub async fn version(&self, tenant: &TenantId, id: Uuid, version: i32) -> Result<Version> {
        let view = self.view(tenant, id).await?;
        let revision = view.script.revision;
        if let Some(v) = self.cache.version(id, revision, version) {
            return Ok((*v).clone());
        }
        let epoch = self.cache.epoch();
        let client = self.db.read().await?;
        let found = sql::get_version(&client, id, version, view.script.active_version_id)
            .await?
            .ok_or_else(|| Error::not_found("version"))?;
        self.cache
            .insert_version(id, revision, found.clone(), epoch);
        Ok(found)
    }

    /// A script's audit trail, newest first.
    pub async fn audit(
        &self,
        tenant: &TenantId,
        id: Uuid,
        window: Window,
    ) -> Result<Page<AuditEntry>> {
        let (client, _) = self.script_of(tenant, id).await?;
        sql::list_audit(&client, id, window).await
    }

    /// The actors of this door (admin view, test hooks).
    pub fn actors(&self) -> &ScriptActors {
        &self.actors
    }

    /// What changed from version `against` (0: the empty graph) to `version`.
    pub async fn diff(
        &self,
        tenant: &TenantId,
        id: Uuid,
        version: i32,
        against: i32,
    ) -> Result<history::GraphDiff> {
        let (client, _) = self.script_of(tenant, id).await?;
        let wanted: Vec<i32> = [version, against].into_iter().filter(|v| *v > 0).collect();
        let contents = sql::version_contents(&client, id, &wanted).await?;
        drop(client);
        let empty = (serde_json::json!({ "nodes": [], "edges": [] }), None);
        let side = |n: i32| {
            if n == 0 {
                Ok(&empty)
            } else {
                contents.get(&n).ok_or_else(|| Error::not_found("version"))
            }
        };
        let (old, new) = (side(against)?, side(version)?);
        let null = serde_json::Value::Null;
        Ok(history::diff(
            &old.0,
            old.1.as_ref().unwrap_or(&null),
            &new.0,
            new.1.as_ref().unwrap_or(&null),
        ))
    }
}
