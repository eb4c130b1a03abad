//! The transactions behind script mutations: plain async functions, each one
//! transaction that writes the row(s) and the audit row(s) together.

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Pool};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::domain::{ActorId, TenantId};
use crate::error::{Error, ErrorCode, Result};
use crate::idempotency::Idem;
use crate::scripts::model::{
    AuditAction, NewScript, NewVersion, Script, ScriptPatch, ScriptStatus, ScriptView, Version,
};
use crate::store::{self, scripts as sql};

/// Whether `err` is a unique violation of `constraint`.
pub fn is_unique_violation(err: &Error, constraint: &str) -> bool {
    let Error::Unexpected(e) = err else {
        return false;
    };
    e.downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.as_db_error())
        .is_some_and(|db| {
            db.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION
                && db.constraint() == Some(constraint)
        })
}

fn slug_taken(slug: &str) -> Error {
    Error::rejected_with(
        ErrorCode::SlugTaken,
        format!("slug {slug:?} is taken in this tenant"),
        json!({ "fields": [{ "field": "slug", "message": "is taken in this tenant" }] }),
    )
}

fn archived() -> Error {
    Error::rejected(ErrorCode::ScriptArchived, "the script is archived")
}

/// `POST /scripts`: the row and its CREATE audit row (version 0).
pub async fn create_script(
    pool: &Pool,
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
        slug: new.slug,
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
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    if let Err(e) = sql::insert_script(&tx, &script).await {
        return Err(if is_unique_violation(&e, "scripts_tenant_slug_key") {
            slug_taken(&script.slug)
        } else {
            e
        });
    }
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

/// One version-create request as it waits in the actor's queue.
pub struct VersionRequest {
    pub tenant: TenantId,
    pub actor: ActorId,
    pub new: NewVersion,
    /// Completed in the transaction that writes the version.
    pub idem: Option<Idem<Version>>,
}

/// Creates the versions of `requests` in ONE transaction: one counter update
/// for N versions, N version rows, N audit rows. Requests that a rule refuses
/// (archived, baseVersion) get their own error without failing the others.
/// Returns each request's outcome and the script row after the commit.
pub async fn create_versions(
    pool: &Pool,
    script_id: Uuid,
    requests: &[VersionRequest],
) -> Result<(Vec<Result<Version>>, Option<Script>)> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let Some(mut script) = sql::lock_script(&tx, script_id).await? else {
        return Ok((
            requests
                .iter()
                .map(|_| Err(Error::not_found("script")))
                .collect(),
            None,
        ));
    };
    let now = store::now_ms();
    let mut outcomes: Vec<Result<Version>> = Vec::with_capacity(requests.len());
    let mut rows = Vec::new();
    let mut audits = Vec::new();
    let mut latest = script.latest_version;
    for r in requests {
        if r.tenant.as_str() != script.tenant_id {
            outcomes.push(Err(Error::not_found("script")));
            continue;
        }
        if script.status == ScriptStatus::Archived {
            outcomes.push(Err(archived()));
            continue;
        }
        if let Some(base) = r.new.base_version {
            if base != latest {
                outcomes.push(Err(Error::rejected_with(
                    ErrorCode::VersionConflict,
                    format!("baseVersion {base} is not the latest version {latest}"),
                    json!({ "latestVersion": latest, "baseVersion": base }),
                )));
                continue;
            }
        }
        latest += 1;
        let id = Uuid::now_v7();
        rows.push(sql::VersionRow {
            id,
            version: latest,
            graph_json: &r.new.graph_json,
            variables_def: r.new.variables_def.as_ref(),
            changelog: r.new.changelog.as_deref(),
            created_by_id: r.actor.as_str(),
        });
        audits.push(sql::AuditRow {
            id: Uuid::now_v7(),
            action: AuditAction::Create,
            version: latest,
            actor_id: r.actor.as_str(),
            diff_json: None,
            note: r.new.note.as_deref(),
        });
        outcomes.push(Ok(Version {
            id,
            script_id,
            version: latest,
            graph_json: r.new.graph_json.clone(),
            variables_def: r.new.variables_def.clone(),
            changelog: r.new.changelog.clone(),
            is_published: false,
            is_active: false,
            created_by_id: r.actor.to_string(),
            created_at: now,
        }));
    }
    if rows.is_empty() {
        return Ok((outcomes, Some(script)));
    }
    let count = rows.len() as i32;
    let last_actor = rows.last().map(|r| r.created_by_id).unwrap_or_default();
    let new_latest = sql::advance_versions(&tx, script_id, count, last_actor, now).await?;
    if new_latest != latest {
        // Impossible under the row lock; refuse to commit numbers we did not check.
        return Err(Error::Unexpected(anyhow::anyhow!(
            "version counter moved under the lock: expected {latest}, got {new_latest}"
        )));
    }
    sql::insert_versions(&tx, script_id, &script.tenant_id, &rows, now).await?;
    sql::insert_audits(&tx, script_id, &script.tenant_id, &audits, now).await?;
    for (r, outcome) in requests.iter().zip(&outcomes) {
        if let (Some(idem), Ok(v)) = (&r.idem, outcome) {
            idem.complete(&tx, v).await?;
        }
    }
    tx.commit().await?;
    script.latest_version = new_latest;
    script.revision += count as i64;
    script.updated_at = now;
    script.updated_by_id = last_actor.to_string();
    Ok((outcomes, Some(script)))
}

/// Whether an `If-Match` header value matches the script's ETag.
pub fn if_match_ok(header: &str, script: &Script) -> bool {
    let etag = script.etag();
    header
        .split(',')
        .map(str::trim)
        .any(|candidate| candidate == "*" || candidate == etag)
}

/// A PATCH as the actor receives it.
pub struct PatchRequest {
    pub tenant: TenantId,
    pub actor: ActorId,
    pub if_match: Option<String>,
    pub patch: ScriptPatch,
    pub note: Option<String>,
}

fn transition_allowed(from: ScriptStatus, to: ScriptStatus) -> bool {
    use ScriptStatus::*;
    matches!(
        (from, to),
        (_, Archived) | (Archived, Draft) | (Draft, Published) | (Published, Draft)
    )
}

/// Keeps only the fields that change, and records them as `{from, to}`.
fn changed_fields(script: &Script, p: &ScriptPatch) -> (ScriptPatch, Map<String, Value>) {
    let mut out = ScriptPatch::default();
    let mut diff = Map::new();
    fn put(diff: &mut Map<String, Value>, field: &str, from: Value, to: Value) {
        diff.insert(field.to_string(), json!({ "from": from, "to": to }));
    }
    if let Some(v) = p.name.as_ref().filter(|v| **v != script.name) {
        put(&mut diff, "name", json!(script.name), json!(v));
        out.name = Some(v.clone());
    }
    if let Some(v) = p.slug.as_ref().filter(|v| **v != script.slug) {
        put(&mut diff, "slug", json!(script.slug), json!(v));
        out.slug = Some(v.clone());
    }
    if let Some(v) = p.description.as_ref().filter(|v| **v != script.description) {
        put(
            &mut diff,
            "description",
            json!(script.description),
            json!(v),
        );
        out.description = Some(v.clone());
    }
    if let Some(v) = p.labels.as_ref().filter(|v| **v != script.labels) {
        put(&mut diff, "labels", json!(script.labels), json!(v));
        out.labels = Some(v.clone());
    }
    if let Some(v) = p.intents.as_ref().filter(|v| **v != script.intents) {
        put(&mut diff, "intents", json!(script.intents), json!(v));
        out.intents = Some(v.clone());
    }
    if let Some(v) = p
        .language_codes
        .as_ref()
        .filter(|v| **v != script.language_codes)
    {
        put(
            &mut diff,
            "languageCodes",
            json!(script.language_codes),
            json!(v),
        );
        out.language_codes = Some(v.clone());
    }
    if let Some(v) = p
        .embedding_key
        .as_ref()
        .filter(|v| **v != script.embedding_key)
    {
        put(
            &mut diff,
            "embeddingKey",
            json!(script.embedding_key),
            json!(v),
        );
        out.embedding_key = Some(v.clone());
    }
    if let Some(v) = p.status.filter(|v| *v != script.status) {
        put(&mut diff, "status", json!(script.status), json!(v));
        out.status = Some(v);
    }
    (out, diff)
}

async fn view_of(client: &impl GenericClient, script: Script) -> Result<ScriptView> {
    let active_version = match script.active_version_id {
        Some(id) => sql::get_version_by_id(client, id).await?,
        None => None,
    };
    Ok(ScriptView {
        script,
        active_version,
    })
}

/// PATCH: merge patch, If-Match, the status transition table, one audit row.
pub async fn patch_script(pool: &Pool, script_id: Uuid, req: &PatchRequest) -> Result<ScriptView> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let script = sql::lock_script(&tx, script_id)
        .await?
        .filter(|s| s.tenant_id == req.tenant.as_str())
        .ok_or_else(|| Error::not_found("script"))?;
    if let Some(h) = &req.if_match {
        if !if_match_ok(h, &script) {
            return Err(Error::rejected_with(
                ErrorCode::PreconditionFailed,
                "If-Match does not match the script's current ETag",
                json!({ "etag": script.etag() }),
            ));
        }
    }
    let (changes, diff) = changed_fields(&script, &req.patch);
    if diff.is_empty() {
        return view_of(&tx, script).await;
    }
    if script.status == ScriptStatus::Archived && diff.keys().any(|k| k != "status") {
        return Err(archived());
    }
    if let Some(to) = changes.status {
        if !transition_allowed(script.status, to) {
            return Err(Error::rejected(
                ErrorCode::InvalidStatusTransition,
                format!(
                    "status cannot change from {} to {}",
                    script.status.as_str(),
                    to.as_str()
                ),
            ));
        }
        if to == ScriptStatus::Published && script.active_version_id.is_none() {
            return Err(Error::rejected(
                ErrorCode::NoActiveVersion,
                "the script has no active version to publish; publish a version first",
            ));
        }
    }
    let now = store::now_ms();
    let updated = match sql::update_script(&tx, script_id, &changes, req.actor.as_str(), now).await
    {
        Ok(s) => s,
        Err(e) if is_unique_violation(&e, "scripts_tenant_slug_key") => {
            return Err(slug_taken(changes.slug.as_deref().unwrap_or_default()))
        }
        Err(e) => return Err(e),
    };
    let action = match changes.status {
        Some(ScriptStatus::Archived) => AuditAction::Archive,
        Some(ScriptStatus::Published) => AuditAction::Publish,
        _ => AuditAction::Update,
    };
    let audit = sql::AuditRow {
        id: Uuid::now_v7(),
        action,
        version: updated.latest_version,
        actor_id: req.actor.as_str(),
        diff_json: Some(Value::Object(diff)),
        note: req.note.as_deref(),
    };
    sql::insert_audits(&tx, script_id, &updated.tenant_id, &[audit], now).await?;
    let view = view_of(&tx, updated).await?;
    tx.commit().await?;
    Ok(view)
}

/// A publish as the actor receives it.
pub struct PublishRequest {
    pub tenant: TenantId,
    pub actor: ActorId,
    pub version: i32,
    pub note: Option<String>,
}

/// Publish (or roll back to) a version: PUBLISH, or ROLLBACK when lower than
/// the version active before; a no-op when it is already active and PUBLISHED.
pub async fn publish(pool: &Pool, script_id: Uuid, req: &PublishRequest) -> Result<ScriptView> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let script = sql::lock_script(&tx, script_id)
        .await?
        .filter(|s| s.tenant_id == req.tenant.as_str())
        .ok_or_else(|| Error::not_found("script"))?;
    if script.status == ScriptStatus::Archived {
        return Err(archived());
    }
    let target = sql::get_version(&tx, script_id, req.version, script.active_version_id)
        .await?
        .ok_or_else(|| Error::not_found("version"))?;
    if target.is_active && script.status == ScriptStatus::Published {
        return Ok(ScriptView {
            script,
            active_version: Some(target),
        });
    }
    let previous = match script.active_version_id {
        Some(id) => sql::get_version_by_id(&tx, id).await?,
        None => None,
    };
    let action = match &previous {
        Some(p) if target.version < p.version => AuditAction::Rollback,
        _ => AuditAction::Publish,
    };
    let now: DateTime<Utc> = store::now_ms();
    let updated = sql::activate_version(&tx, script_id, target.id, req.actor.as_str(), now).await?;
    let diff = json!({
        "activeVersionId": { "from": script.active_version_id, "to": target.id },
        "status": { "from": script.status, "to": ScriptStatus::Published },
    });
    let audit = sql::AuditRow {
        id: Uuid::now_v7(),
        action,
        version: target.version,
        actor_id: req.actor.as_str(),
        diff_json: Some(diff),
        note: req.note.as_deref(),
    };
    sql::insert_audits(&tx, script_id, &updated.tenant_id, &[audit], now).await?;
    tx.commit().await?;
    Ok(ScriptView {
        script: updated,
        active_version: Some(Version {
            is_published: true,
            is_active: true,
            ..target
        }),
    })
}
