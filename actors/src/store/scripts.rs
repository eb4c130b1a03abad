//! SQL for scripts, script_versions and script_audit_logs.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::Value;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::domain::script::slug_taken;
use crate::domain::{
    AuditAction, AuditEntry, Key, Page, Result, Script, ScriptPatch, ScriptStatus, Version,
    VersionSummary, Window,
};
use crate::store::unique_violation;

const SLUG_KEY: &str = "scripts_tenant_slug_key";

const SCRIPT_COLUMNS: &str = "id, tenant_id, name, slug, description, status, active_version_id, \
     latest_version, revision, labels, intents, language_codes, embedding_key, created_by_id, \
     updated_by_id, created_at, updated_at";

fn script_from(row: &Row) -> Script {
    Script {
        id: row.get("id"),
        tenant_id: row.get("tenant_id"),
        name: row.get("name"),
        slug: row.get("slug"),
        description: row.get("description"),
        status: ScriptStatus::parse(row.get("status")).unwrap_or(ScriptStatus::Draft),
        active_version_id: row.get("active_version_id"),
        latest_version: row.get("latest_version"),
        revision: row.get("revision"),
        labels: row.get("labels"),
        intents: row.get("intents"),
        language_codes: row.get("language_codes"),
        embedding_key: row.get("embedding_key"),
        created_by_id: row.get("created_by_id"),
        updated_by_id: row.get("updated_by_id"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    }
}

const VERSION_COLUMNS: &str = "v.id, v.script_id, v.version, v.graph_json, v.variables_def, \
     v.changelog, v.is_published, v.created_by_id, v.created_at";

fn version_from(row: &Row, active: Option<Uuid>) -> Version {
    let id: Uuid = row.get("id");
    Version {
        id,
        script_id: row.get("script_id"),
        version: row.get("version"),
        graph_json: row.get("graph_json"),
        variables_def: row.get("variables_def"),
        changelog: row.get("changelog"),
        is_published: row.get("is_published"),
        is_active: active == Some(id),
        created_by_id: row.get("created_by_id"),
        created_at: row.get("created_at"),
    }
}

/// Inserts a script; a slug already used in the tenant is refused.
#[tracing::instrument(level = "debug", skip_all, fields(script = %s.id, tenant = %s.tenant_id))]
pub async fn insert_script(client: &impl GenericClient, s: &Script) -> Result<()> {
    let stmt = client
        .prepare_cached(
            "INSERT INTO scripts (id, tenant_id, name, slug, description, status, latest_version, \
             revision, labels, intents, language_codes, embedding_key, created_by_id, updated_by_id, \
             created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        )
        .await?;
    client
        .execute(
            &stmt,
            &[
                &s.id,
                &s.tenant_id,
                &s.name,
                &s.slug,
                &s.description,
                &s.status.as_str(),
                &s.latest_version,
                &s.revision,
                &s.labels,
                &s.intents,
                &s.language_codes,
                &s.embedding_key,
                &s.created_by_id,
                &s.updated_by_id,
                &s.created_at,
                &s.updated_at,
            ],
        )
        .await
        .map_err(|e| unique_violation(e, SLUG_KEY, || slug_taken(&s.slug)))?;
    Ok(())
}

/// A script of a tenant.
pub async fn get_script(
    client: &impl GenericClient,
    tenant: &str,
    id: Uuid,
) -> Result<Option<Script>> {
    let sql = format!("SELECT {SCRIPT_COLUMNS} FROM scripts WHERE id = $1 AND tenant_id = $2");
    Ok(super::all(client, &sql, &[&id, &tenant], script_from)
        .await?
        .pop())
}

/// A script by id (any tenant: the owning actor checks), row-locked until the
/// transaction ends. This lock is what serializes writers across processes.
pub async fn lock_script(client: &impl GenericClient, id: Uuid) -> Result<Option<Script>> {
    let sql = format!("SELECT {SCRIPT_COLUMNS} FROM scripts WHERE id = $1 FOR UPDATE");
    Ok(super::all(client, &sql, &[&id], script_from).await?.pop())
}

/// A script by id, unlocked (actor start).
pub async fn load_script(client: &impl GenericClient, id: Uuid) -> Result<Option<Script>> {
    let sql = format!("SELECT {SCRIPT_COLUMNS} FROM scripts WHERE id = $1");
    Ok(super::all(client, &sql, &[&id], script_from).await?.pop())
}

/// Advances the version counter by `count` and bumps the revision; returns the
/// new latest version. Runs under the row lock of `lock_script`.
pub async fn advance_versions(
    client: &impl GenericClient,
    id: Uuid,
    count: i32,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<i32> {
    let stmt = client
        .prepare_cached(
            "UPDATE scripts SET latest_version = latest_version + $2, revision = revision + $2, \
             updated_by_id = $3, updated_at = $4 WHERE id = $1 RETURNING latest_version",
        )
        .await?;
    let row = client
        .query_one(&stmt, &[&id, &count, &actor, &now])
        .await?;
    Ok(row.get(0))
}

/// One version row to insert.
pub struct VersionRow<'a> {
    pub id: Uuid,
    pub version: i32,
    pub graph_json: &'a Value,
    pub variables_def: Option<&'a Value>,
    pub changelog: Option<&'a str>,
    pub created_by_id: &'a str,
}

/// Inserts many versions of one script in one statement.
pub async fn insert_versions(
    client: &impl GenericClient,
    script_id: Uuid,
    tenant: &str,
    rows: &[VersionRow<'_>],
    now: DateTime<Utc>,
) -> Result<()> {
    let stmt = client
        .prepare_cached(
            "INSERT INTO script_versions (id, script_id, tenant_id, version, graph_json, variables_def, \
             changelog, created_by_id, created_at) \
             SELECT u.id, $1, $2, u.version, u.graph_json, u.variables_def, u.changelog, u.created_by_id, $3 \
             FROM UNNEST($4::uuid[], $5::int4[], $6::jsonb[], $7::jsonb[], $8::text[], $9::text[]) \
               AS u(id, version, graph_json, variables_def, changelog, created_by_id)",
        )
        .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let versions: Vec<i32> = rows.iter().map(|r| r.version).collect();
    let graphs: Vec<&Value> = rows.iter().map(|r| r.graph_json).collect();
    let defs: Vec<Option<&Value>> = rows.iter().map(|r| r.variables_def).collect();
    let changelogs: Vec<Option<&str>> = rows.iter().map(|r| r.changelog).collect();
    let creators: Vec<&str> = rows.iter().map(|r| r.created_by_id).collect();
    client
        .execute(
            &stmt,
            &[
                &script_id,
                &tenant,
                &now,
                &ids,
                &versions,
                &graphs,
                &defs,
                &changelogs,
                &creators,
            ],
        )
        .await?;
    Ok(())
}

/// One audit row to insert.
pub struct AuditRow<'a> {
    pub id: Uuid,
    pub action: AuditAction,
    pub version: i32,
    pub actor_id: &'a str,
    pub diff_json: Option<Value>,
    pub note: Option<&'a str>,
}

/// Inserts audit rows of one script in one statement.
pub async fn insert_audits(
    client: &impl GenericClient,
    script_id: Uuid,
    tenant: &str,
    rows: &[AuditRow<'_>],
    now: DateTime<Utc>,
) -> Result<()> {
    let stmt = client
        .prepare_cached(
            "INSERT INTO script_audit_logs (id, script_id, tenant_id, action, version, actor_id, \
             diff_json, note, created_at) \
             SELECT u.id, $1, $2, u.action, u.version, u.actor_id, u.diff_json, u.note, $3 \
             FROM UNNEST($4::uuid[], $5::text[], $6::int4[], $7::text[], $8::jsonb[], $9::text[]) \
               AS u(id, action, version, actor_id, diff_json, note)",
        )
        .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let actions: Vec<&str> = rows.iter().map(|r| r.action.as_str()).collect();
    let versions: Vec<i32> = rows.iter().map(|r| r.version).collect();
    let actors: Vec<&str> = rows.iter().map(|r| r.actor_id).collect();
    let diffs: Vec<Option<&Value>> = rows.iter().map(|r| r.diff_json.as_ref()).collect();
    let notes: Vec<Option<&str>> = rows.iter().map(|r| r.note).collect();
    client
        .execute(
            &stmt,
            &[
                &script_id, &tenant, &now, &ids, &actions, &versions, &actors, &diffs, &notes,
            ],
        )
        .await?;
    Ok(())
}

/// Applies a patch (fields already validated and known to change) and bumps the
/// revision; returns the new row. A slug already used in the tenant is refused.
#[tracing::instrument(level = "debug", skip_all, fields(script = %id))]
pub async fn update_script(
    client: &impl GenericClient,
    id: Uuid,
    p: &ScriptPatch,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Script> {
    let stmt = client
        .prepare_cached(&format!(
            "UPDATE scripts SET \
               name = COALESCE($2, name), \
               slug = COALESCE($3, slug), \
               description = CASE WHEN $4 THEN $5 ELSE description END, \
               labels = COALESCE($6, labels), \
               intents = COALESCE($7, intents), \
               language_codes = COALESCE($8, language_codes), \
               embedding_key = CASE WHEN $9 THEN $10 ELSE embedding_key END, \
               status = COALESCE($11, status), \
               revision = revision + 1, updated_by_id = $12, updated_at = $13 \
             WHERE id = $1 RETURNING {SCRIPT_COLUMNS}"
        ))
        .await?;
    let row = client
        .query_one(
            &stmt,
            &[
                &id,
                &p.name,
                &p.slug.as_ref().map(|s| s.as_str()),
                &p.description.is_some(),
                &p.description.clone().flatten(),
                &p.labels,
                &p.intents,
                &p.language_codes,
                &p.embedding_key.is_some(),
                &p.embedding_key.clone().flatten(),
                &p.status.map(|s| s.as_str()),
                &actor,
                &now,
            ],
        )
        .await
        .map_err(|e| {
            unique_violation(e, SLUG_KEY, || {
                slug_taken(p.slug.as_ref().map(|s| s.as_str()).unwrap_or_default())
            })
        })?;
    Ok(script_from(&row))
}

/// Makes `version_id` the active version, marks it published, sets the status
/// PUBLISHED and bumps the revision.
pub async fn activate_version(
    client: &impl GenericClient,
    script_id: Uuid,
    version_id: Uuid,
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Script> {
    let mark = client
        .prepare_cached(
            "UPDATE script_versions SET is_published = true WHERE id = $1 AND NOT is_published",
        )
        .await?;
    client.execute(&mark, &[&version_id]).await?;
    let stmt = client
        .prepare_cached(&format!(
            "UPDATE scripts SET active_version_id = $2, status = 'PUBLISHED', revision = revision + 1, \
             updated_by_id = $3, updated_at = $4 WHERE id = $1 RETURNING {SCRIPT_COLUMNS}"
        ))
        .await?;
    let row = client
        .query_one(&stmt, &[&script_id, &version_id, &actor, &now])
        .await?;
    Ok(script_from(&row))
}

/// A version of a script by number.
pub async fn get_version(
    client: &impl GenericClient,
    script_id: Uuid,
    version: i32,
    active: Option<Uuid>,
) -> Result<Option<Version>> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {VERSION_COLUMNS} FROM script_versions v WHERE v.script_id = $1 AND v.version = $2"
        ))
        .await?;
    Ok(client
        .query_opt(&stmt, &[&script_id, &version])
        .await?
        .map(|r| version_from(&r, active)))
}

/// A version by id (the active one).
pub async fn get_version_by_id(client: &impl GenericClient, id: Uuid) -> Result<Option<Version>> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {VERSION_COLUMNS} FROM script_versions v WHERE v.id = $1"
        ))
        .await?;
    Ok(client
        .query_opt(&stmt, &[&id])
        .await?
        .map(|r| version_from(&r, Some(id))))
}

/// A script and its active version in one round trip.
/// A script (of any tenant: callers check) with its active version, in one
/// statement.
pub async fn load_script_view(
    client: &impl GenericClient,
    id: Uuid,
) -> Result<Option<(Script, Option<Version>)>> {
    let script_cols: String = SCRIPT_COLUMNS
        .split(", ")
        .map(|c| format!("s.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {script_cols}, v.id AS v_id, v.script_id AS v_script_id, v.version AS v_version, \
               v.graph_json AS v_graph_json, v.variables_def AS v_variables_def, v.changelog AS v_changelog, \
               v.is_published AS v_is_published, v.created_by_id AS v_created_by_id, v.created_at AS v_created_at \
             FROM scripts s LEFT JOIN script_versions v ON v.id = s.active_version_id \
             WHERE s.id = $1"
        ))
        .await?;
    let Some(row) = client.query_opt(&stmt, &[&id]).await? else {
        return Ok(None);
    };
    let script = script_from(&row);
    let active = row.get::<_, Option<Uuid>>("v_id").map(|vid| Version {
        id: vid,
        script_id: row.get("v_script_id"),
        version: row.get("v_version"),
        graph_json: row.get("v_graph_json"),
        variables_def: row.get("v_variables_def"),
        changelog: row.get("v_changelog"),
        is_published: row.get("v_is_published"),
        is_active: true,
        created_by_id: row.get("v_created_by_id"),
        created_at: row.get("v_created_at"),
    });
    Ok(Some((script, active)))
}

/// Filters of `GET /scripts`.
#[derive(Debug, Clone, Default)]
pub struct ScriptFilter {
    /// A substring of name or slug (matched literally: escaped for LIKE here).
    pub q: Option<String>,
    pub slug: Option<String>,
    pub status: Option<ScriptStatus>,
}

/// Escapes `%`, `_` and `\` so that LIKE matches them literally.
fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A page of a tenant's scripts, newest first, after the keyset `(created_at, id)`.
pub async fn list_scripts(
    client: &impl GenericClient,
    tenant: &str,
    filter: &ScriptFilter,
    window: Window,
) -> Result<Page<Script>> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {SCRIPT_COLUMNS} FROM scripts \
             WHERE tenant_id = $1 \
               AND ($2::text IS NULL OR name ILIKE '%' || $2 || '%' OR slug ILIKE '%' || $2 || '%') \
               AND ($3::text IS NULL OR slug = $3) \
               AND ($4::text IS NULL OR status = $4) \
               AND (created_at, id) < ($5, $6) \
             ORDER BY created_at DESC, id DESC LIMIT $7"
        ))
        .await?;
    let (t, id) = window.after_time().unwrap_or_else(super::keyset_start);
    let q = filter.q.as_deref().map(like_escape);
    let rows = client
        .query(
            &stmt,
            &[
                &tenant,
                &q,
                &filter.slug,
                &filter.status.map(|s| s.as_str()),
                &t,
                &id,
                &window.fetch(),
            ],
        )
        .await?;
    let rows = rows.iter().map(script_from).collect();
    Ok(window.page(rows, |s: &Script| Key::time(s.created_at, s.id)))
}

/// A page of a script's versions, highest first, below `before`.
pub async fn list_versions(
    client: &impl GenericClient,
    script_id: Uuid,
    active: Option<Uuid>,
    window: Window,
) -> Result<Page<VersionSummary>> {
    let stmt = client
        .prepare_cached(
            "SELECT id, script_id, version, changelog, is_published, created_by_id, created_at \
             FROM script_versions WHERE script_id = $1 AND version < $2 \
             ORDER BY version DESC LIMIT $3",
        )
        .await?;
    let before = window.after_version().unwrap_or(i32::MAX);
    let rows = client
        .query(&stmt, &[&script_id, &before, &window.fetch()])
        .await?;
    let rows = rows
        .iter()
        .map(|r| {
            let id: Uuid = r.get("id");
            VersionSummary {
                id,
                script_id: r.get("script_id"),
                version: r.get("version"),
                changelog: r.get("changelog"),
                is_published: r.get("is_published"),
                is_active: active == Some(id),
                created_by_id: r.get("created_by_id"),
                created_at: r.get("created_at"),
            }
        })
        .collect();
    Ok(window.page(rows, |v: &VersionSummary| Key::Version(v.version)))
}

/// A page of a script's audit trail, newest first, after `(created_at, id)`.
pub async fn list_audit(
    client: &impl GenericClient,
    script_id: Uuid,
    window: Window,
) -> Result<Page<AuditEntry>> {
    let stmt = client
        .prepare_cached(
            "SELECT id, script_id, action, version, actor_id, diff_json, note, created_at \
             FROM script_audit_logs WHERE script_id = $1 \
               AND (created_at, id) < ($2, $3) \
             ORDER BY created_at DESC, id DESC LIMIT $4",
        )
        .await?;
    let (t, id) = window.after_time().unwrap_or_else(super::keyset_start);
    let rows = client
        .query(&stmt, &[&script_id, &t, &id, &window.fetch()])
        .await?;
    let rows = rows
        .iter()
        .map(|r| AuditEntry {
            id: r.get("id"),
            script_id: r.get("script_id"),
            action: AuditAction::parse(r.get("action")).unwrap_or(AuditAction::Update),
            version: r.get("version"),
            actor_id: r.get("actor_id"),
            diff_json: r.get("diff_json"),
            note: r.get("note"),
            created_at: r.get("created_at"),
        })
        .collect();
    Ok(window.page(rows, |a: &AuditEntry| Key::time(a.created_at, a.id)))
}

/// The graph and variables of some versions of a script, by number (the
/// sources of restores and merges, read under the script's row lock).
pub async fn version_contents(
    client: &impl GenericClient,
    script_id: Uuid,
    versions: &[i32],
) -> Result<std::collections::HashMap<i32, (Value, Option<Value>)>> {
    if versions.is_empty() {
        return Ok(Default::default());
    }
    let stmt = client
        .prepare_cached(
            "SELECT version, graph_json, variables_def FROM script_versions \
             WHERE script_id = $1 AND version = ANY($2)",
        )
        .await?;
    Ok(client
        .query(&stmt, &[&script_id, &versions])
        .await?
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect())
}
