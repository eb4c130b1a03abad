//! Scripts, versions and audit entries, the requests that change them, and
//! the rules those requests follow.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::domain::{ActorId, Error, ErrorCode, Slug, TenantId};

status_enum!(ScriptStatus {
    Draft = "DRAFT",
    Published = "PUBLISHED",
    Archived = "ARCHIVED",
});

status_enum!(AuditAction {
    Create = "CREATE",
    Update = "UPDATE",
    Publish = "PUBLISH",
    Rollback = "ROLLBACK",
    Archive = "ARCHIVE",
});

/// A script row.
#[derive(Debug, Clone)]
pub struct Script {
    pub id: Uuid,
    pub tenant_id: String,
    pub name: String,
    pub slug: String,
    pub description: Option<String>,
    pub status: ScriptStatus,
    pub active_version_id: Option<Uuid>,
    pub latest_version: i32,
    pub labels: Vec<String>,
    pub intents: Vec<String>,
    pub language_codes: Vec<String>,
    pub embedding_key: Option<String>,
    pub created_by_id: String,
    pub updated_by_id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Bumped by every change of the row; the ETag is derived from it.
    pub revision: i64,
}

impl Script {
    /// The strong ETag of the current revision.
    pub fn etag(&self) -> String {
        format!("\"{}-{}\"", self.id.simple(), self.revision)
    }
}

/// A script with its active version in full (or `null`).
#[derive(Debug, Clone)]
pub struct ScriptView {
    pub script: Script,
    pub active_version: Option<Version>,
}

/// An immutable numbered version of a script's graph.
#[derive(Debug, Clone)]
pub struct Version {
    pub id: Uuid,
    pub script_id: Uuid,
    pub version: i32,
    /// `{ "nodes": [...], "edges": [...] }` and anything else the editor keeps.
    pub graph_json: Value,
    pub variables_def: Option<Value>,
    pub changelog: Option<String>,
    /// Has ever been published (stays true).
    pub is_published: bool,
    /// Is the script's active version.
    pub is_active: bool,
    pub created_by_id: String,
    pub created_at: DateTime<Utc>,
}

/// A version in lists: without `graphJson` and `variablesDef`.
#[derive(Debug, Clone)]
pub struct VersionSummary {
    pub id: Uuid,
    pub script_id: Uuid,
    pub version: i32,
    pub changelog: Option<String>,
    pub is_published: bool,
    pub is_active: bool,
    pub created_by_id: String,
    pub created_at: DateTime<Utc>,
}

/// One row of a script's audit trail.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub id: Uuid,
    pub script_id: Uuid,
    pub action: AuditAction,
    pub version: i32,
    pub actor_id: String,
    /// `{ "field": { "from": …, "to": … } }`; null on CREATE.
    pub diff_json: Option<Value>,
    pub note: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// What `POST /scripts` creates.
#[derive(Debug, Clone)]
pub struct NewScript {
    pub name: String,
    pub slug: Slug,
    pub description: Option<String>,
    pub labels: Vec<String>,
    pub intents: Vec<String>,
    pub language_codes: Vec<String>,
    pub embedding_key: Option<String>,
}

/// A validated JSON merge patch of a script. `None`: leave; `Some(None)`: clear.
#[derive(Debug, Clone, Default)]
pub struct ScriptPatch {
    pub name: Option<String>,
    pub slug: Option<Slug>,
    pub description: Option<Option<String>>,
    pub labels: Option<Vec<String>>,
    pub intents: Option<Vec<String>>,
    pub language_codes: Option<Vec<String>>,
    pub embedding_key: Option<Option<String>>,
    pub status: Option<ScriptStatus>,
}

/// Where a new version's graph and variables come from.
#[derive(Debug, Clone)]
pub enum VersionContent {
    /// Given in the request.
    Given {
        graph_json: Value,
        variables_def: Option<Value>,
    },
    /// A copy of an existing version (restore).
    Restore(i32),
}

/// What a new version carries.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub content: VersionContent,
    pub changelog: Option<String>,
    pub note: Option<String>,
    pub base_version: Option<i32>,
    /// With a `base_version` below the latest: merge three-way instead of 409.
    pub merge: bool,
}

/// A version create as the script's actor receives it.
pub struct VersionRequest {
    pub tenant: TenantId,
    pub actor: ActorId,
    pub new: NewVersion,
}

/// A PATCH as the script's actor receives it.
pub struct PatchRequest {
    pub tenant: TenantId,
    pub actor: ActorId,
    pub if_match: Option<String>,
    pub patch: ScriptPatch,
    pub note: Option<String>,
}

/// A publish as the script's actor receives it.
pub struct PublishRequest {
    pub tenant: TenantId,
    pub actor: ActorId,
    pub version: i32,
    pub note: Option<String>,
}

pub fn slug_taken(slug: &str) -> Error {
    Error::rejected_with(
        ErrorCode::SlugTaken,
        format!("slug {slug:?} is taken in this tenant"),
        json!({ "fields": [{ "field": "slug", "message": "is taken in this tenant" }] }),
    )
}

pub fn archived() -> Error {
    Error::rejected(ErrorCode::ScriptArchived, "the script is archived")
}

/// Whether an `If-Match` value (a list of ETags, or `*`) matches the script.
pub fn if_match_ok(header: &str, script: &Script) -> bool {
    let etag = script.etag();
    header
        .split(',')
        .map(str::trim)
        .any(|candidate| candidate == "*" || candidate == etag)
}

/// `baseVersion` must be the latest version when given.
pub fn check_base(base: Option<i32>, latest: i32) -> Result<(), Error> {
    match base {
        Some(base) if base != latest => Err(Error::rejected_with(
            ErrorCode::VersionConflict,
            format!("baseVersion {base} is not the latest version {latest}"),
            json!({ "latestVersion": latest, "baseVersion": base }),
        )),
        _ => Ok(()),
    }
}

fn transition_allowed(from: ScriptStatus, to: ScriptStatus) -> bool {
    use ScriptStatus::*;
    matches!(
        (from, to),
        (_, Archived) | (Archived, Draft) | (Draft, Published) | (Published, Draft)
    )
}

/// The rules of a PATCH against the locked row: If-Match, archived, the
/// status transition table. Returns the fields that change and their diff.
pub fn check_patch(
    script: &Script,
    req: &PatchRequest,
) -> Result<(ScriptPatch, Map<String, Value>), Error> {
    if let Some(h) = &req.if_match {
        if !if_match_ok(h, script) {
            return Err(Error::rejected_with(
                ErrorCode::PreconditionFailed,
                "If-Match does not match the script's current ETag",
                json!({ "etag": script.etag() }),
            ));
        }
    }
    let (changes, diff) = changed_fields(script, &req.patch);
    if diff.is_empty() {
        return Ok((changes, diff));
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
    Ok((changes, diff))
}

/// The audit action a patch records.
pub fn patch_action(changes: &ScriptPatch) -> AuditAction {
    match changes.status {
        Some(ScriptStatus::Archived) => AuditAction::Archive,
        Some(ScriptStatus::Published) => AuditAction::Publish,
        _ => AuditAction::Update,
    }
}

/// Keeps `new` when it differs from `old`, recording `{from, to}` under `field`.
fn keep_change<T: Clone + PartialEq + serde::Serialize>(
    diff: &mut Map<String, Value>,
    field: &str,
    old: &T,
    new: Option<&T>,
) -> Option<T> {
    let new = new.filter(|v| *v != old)?;
    diff.insert(field.to_string(), json!({ "from": old, "to": new }));
    Some(new.clone())
}

/// Keeps only the fields that change, and records them as `{from, to}`.
fn changed_fields(s: &Script, p: &ScriptPatch) -> (ScriptPatch, Map<String, Value>) {
    let mut d = Map::new();
    let slug = p.slug.as_ref().filter(|v| v.as_str() != s.slug);
    if let Some(v) = slug {
        d.insert("slug".into(), json!({ "from": s.slug, "to": v.as_str() }));
    }
    let status = p.status.filter(|v| *v != s.status);
    let out = ScriptPatch {
        name: keep_change(&mut d, "name", &s.name, p.name.as_ref()),
        slug: slug.cloned(),
        description: keep_change(
            &mut d,
            "description",
            &s.description,
            p.description.as_ref(),
        ),
        labels: keep_change(&mut d, "labels", &s.labels, p.labels.as_ref()),
        intents: keep_change(&mut d, "intents", &s.intents, p.intents.as_ref()),
        language_codes: keep_change(
            &mut d,
            "languageCodes",
            &s.language_codes,
            p.language_codes.as_ref(),
        ),
        embedding_key: keep_change(
            &mut d,
            "embeddingKey",
            &s.embedding_key,
            p.embedding_key.as_ref(),
        ),
        status,
    };
    if let Some(v) = status {
        d.insert(
            "status".into(),
            json!({ "from": s.status.as_str(), "to": v.as_str() }),
        );
    }
    (out, d)
}
