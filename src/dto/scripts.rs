//! Scripts, versions and audit entries on the wire: request bodies, queries
//! and views.

use actors::domain::{self as core, ScriptPatch, Slug};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use validator::Validate;

use crate::dto::{ts, view, wire_enum};
use crate::http::cursor::{KeyKind, PageRequest};
use crate::http::error::ApiError;
use crate::http::extract::RequestBody;
use crate::http::validation::{self as rules, double_option, Fields};
use crate::settings::LimitsSettings;

wire_enum!(ScriptStatus {
    Draft,
    Published,
    Archived
});
wire_enum!(AuditAction {
    Create,
    Update,
    Publish,
    Rollback,
    Archive
});

// ---------- requests ----------

/// `POST /scripts`.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"name": "Onboarding", "slug": "onboarding", "labels": ["sales"], "languageCodes": ["en", "pt-BR"]}))]
pub struct CreateScriptRequest {
    /// Alternative to the `x-tenant-id` header; both present must agree.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]
    pub tenant_id: Option<String>,
    /// 1..200 characters, not blank.
    #[validate(custom(function = "rules::name"))]
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    pub name: String,
    /// Unique in the tenant.
    #[validate(custom(function = "rules::slug"))]
    #[schema(max_length = 100, pattern = "^[a-z0-9]+(-[a-z0-9]+)*$")]
    pub slug: String,
    #[validate(custom(function = "rules::description"))]
    #[schema(max_length = 2000)]
    pub description: Option<String>,
    /// Up to 50 items of 1..100 characters.
    #[validate(custom(function = "rules::text_list"))]
    #[schema(max_items = 50)]
    pub labels: Option<Vec<String>>,
    /// Up to 50 items of 1..100 characters.
    #[validate(custom(function = "rules::text_list"))]
    #[schema(max_items = 50)]
    pub intents: Option<Vec<String>>,
    /// BCP 47 tags such as `en`, `pt-BR`.
    #[validate(custom(function = "rules::language_codes"))]
    #[schema(max_items = 50)]
    pub language_codes: Option<Vec<String>>,
    #[validate(custom(function = "rules::embedding_key"))]
    #[schema(min_length = 1, max_length = 200)]
    pub embedding_key: Option<String>,
}

impl RequestBody for CreateScriptRequest {}

fn slug(s: &str) -> Result<Slug, ApiError> {
    Slug::parse(s).map_err(|m| ApiError::field("slug", m))
}

impl CreateScriptRequest {
    /// The script to create (after `validate`).
    pub fn into_new(self) -> Result<core::NewScript, ApiError> {
        Ok(core::NewScript {
            slug: slug(&self.slug)?,
            name: self.name,
            description: self.description,
            labels: self.labels.unwrap_or_default(),
            intents: self.intents.unwrap_or_default(),
            language_codes: self.language_codes.unwrap_or_default(),
            embedding_key: self.embedding_key,
        })
    }
}

/// `PATCH /scripts/:id`: a JSON merge patch. `null` clears an optional field.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"name": "Onboarding v2", "status": "ARCHIVED", "note": "replaced"}))]
pub struct PatchScriptRequest {
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub name: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub slug: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Vec<String>>)]
    pub labels: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Vec<String>>)]
    pub intents: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Vec<String>>)]
    pub language_codes: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub embedding_key: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<ScriptStatus>)]
    pub status: Option<Option<ScriptStatus>>,
    /// Recorded on the audit row; not a change by itself.
    pub note: Option<String>,
}

impl RequestBody for PatchScriptRequest {}

impl PatchScriptRequest {
    pub fn into_domain(self) -> Result<(ScriptPatch, Option<String>), ApiError> {
        let mut f = Fields::default();
        let required = |f: &mut Fields, field: &str, v: &Option<Option<String>>| {
            if matches!(v, Some(None)) {
                f.fail(field, "is required and cannot be null");
            }
        };
        required(&mut f, "name", &self.name);
        required(&mut f, "slug", &self.slug);
        if matches!(self.status, Some(None)) {
            f.fail("status", "is required and cannot be null");
        }
        if let Some(Some(v)) = &self.name {
            f.check("name", v.as_str(), rules::name);
        }
        if let Some(Some(v)) = &self.slug {
            f.check("slug", v.as_str(), rules::slug);
        }
        if let Some(Some(v)) = &self.description {
            f.check("description", v.as_str(), rules::description);
        }
        if let Some(Some(v)) = &self.labels {
            f.check("labels", v.as_slice(), rules::text_list);
        }
        if let Some(Some(v)) = &self.intents {
            f.check("intents", v.as_slice(), rules::text_list);
        }
        if let Some(Some(v)) = &self.language_codes {
            f.check("languageCodes", v.as_slice(), rules::language_codes);
        }
        if let Some(Some(v)) = &self.embedding_key {
            f.check("embeddingKey", v.as_str(), rules::embedding_key);
        }
        if let Some(v) = &self.note {
            f.check("note", v.as_str(), rules::note);
        }
        f.finish()?;
        let patch = ScriptPatch {
            name: self.name.flatten(),
            slug: self.slug.flatten().map(|s| slug(&s)).transpose()?,
            description: self.description,
            labels: self.labels.map(Option::unwrap_or_default),
            intents: self.intents.map(Option::unwrap_or_default),
            language_codes: self.language_codes.map(Option::unwrap_or_default),
            embedding_key: self.embedding_key,
            status: self.status.flatten().map(Into::into),
        };
        let empty = patch.name.is_none()
            && patch.slug.is_none()
            && patch.description.is_none()
            && patch.labels.is_none()
            && patch.intents.is_none()
            && patch.language_codes.is_none()
            && patch.embedding_key.is_none()
            && patch.status.is_none();
        if empty {
            return Err(ApiError::field(
                "body",
                "the patch changes no field (note alone is not a change)",
            ));
        }
        Ok((patch, self.note))
    }
}

/// `POST /scripts/:id/versions`: a new version from `graphJson`, a copy of
/// version `fromVersion` (restore), or, with `merge: true` and a `baseVersion`
/// below the latest, `graphJson` merged three-way with what was saved since.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(examples(
    json!({"graphJson": {"nodes": [{"id": "n1"}], "edges": []}, "changelog": "first draft", "baseVersion": 0}),
    json!({"fromVersion": 2, "changelog": "back to version 2"}),
    json!({"graphJson": {"nodes": [{"id": "n1", "text": "Hi"}], "edges": []}, "baseVersion": 3, "merge": true})
))]
pub struct CreateVersionRequest {
    /// An object with arrays `nodes` and `edges`. Required unless `fromVersion`.
    #[validate(custom(function = "rules::graph_json"))]
    #[schema(value_type = Option<Object>)]
    pub graph_json: Option<Value>,
    /// Restore: the new version copies this version's `graphJson` and
    /// `variablesDef` (audited `{"restoredFrom": N}`). Not with `graphJson`,
    /// `variablesDef` or `merge`.
    #[validate(range(min = 1, message = "must be a version number (1 or more)"))]
    #[schema(minimum = 1)]
    pub from_version: Option<i32>,
    /// With a `baseVersion` below the latest: merge this save three-way
    /// (base = `baseVersion`, theirs = the latest) instead of 409
    /// VERSION_CONFLICT; conflicting edits are 409 MERGE_CONFLICT.
    pub merge: Option<bool>,
    /// The variables this version defines (an object).
    #[validate(custom(function = "rules::json_object"))]
    #[schema(value_type = Option<Object>)]
    pub variables_def: Option<Value>,
    #[validate(custom(function = "rules::description"))]
    pub changelog: Option<String>,
    /// Recorded on the audit row.
    #[validate(custom(function = "rules::note"))]
    pub note: Option<String>,
    /// When given, must equal the script's `latestVersion`, else 409 VERSION_CONFLICT.
    #[validate(range(min = 0))]
    #[schema(minimum = 0)]
    pub base_version: Option<i32>,
}

impl RequestBody for CreateVersionRequest {
    fn limit(limits: &LimitsSettings) -> usize {
        limits.versions_body_bytes
    }
}

/// `POST /scripts/:id/versions/:version/publish` (the body may be empty).
#[derive(Debug, Default, Deserialize, Validate, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"note": "go live"}))]
pub struct PublishRequestBody {
    #[validate(custom(function = "rules::note"))]
    pub note: Option<String>,
}

impl CreateVersionRequest {
    /// The version to create (after `validate`): exactly one of `graphJson`
    /// and `fromVersion`; a restore takes neither `variablesDef` nor `merge`.
    pub fn into_new(self) -> Result<core::NewVersion, ApiError> {
        let merge = self.merge.unwrap_or(false);
        let content = match (self.graph_json, self.from_version) {
            (Some(_), Some(_)) => return Err(ApiError::field("fromVersion", "not with graphJson")),
            (None, None) => {
                return Err(ApiError::field(
                    "graphJson",
                    "required (or fromVersion to restore)",
                ))
            }
            (Some(graph_json), None) => core::VersionContent::Given {
                graph_json,
                variables_def: self.variables_def,
            },
            (None, Some(n)) => {
                if self.variables_def.is_some() {
                    return Err(ApiError::field("variablesDef", "not with fromVersion"));
                }
                if self.merge.is_some() {
                    return Err(ApiError::field("merge", "not with fromVersion"));
                }
                core::VersionContent::Restore(n)
            }
        };
        Ok(core::NewVersion {
            content,
            changelog: self.changelog,
            note: self.note,
            base_version: self.base_version,
            merge,
        })
    }
}

impl RequestBody for PublishRequestBody {
    fn empty_is_default() -> bool {
        true
    }
}

// ---------- queries ----------

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListScriptsQuery {
    /// Alternative to the `x-tenant-id` header.
    pub tenant_id: Option<String>,
    /// Case-insensitive substring of name or slug (1..100 characters after trimming).
    pub q: Option<String>,
    /// Exact slug.
    pub slug: Option<String>,
    pub status: Option<ScriptStatus>,
    /// 1..200, default 50.
    pub limit: Option<u32>,
    /// `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1..200, default 50.
    pub limit: Option<u32>,
    /// `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

impl PageQuery {
    /// The page asked for, bound to the list's `filters`.
    pub fn page(&self, filters: &[&str], kind: KeyKind) -> Result<PageRequest, ApiError> {
        PageRequest::parse(self.limit, self.cursor.as_deref(), filters, kind)
    }
}

// ---------- views ----------

view! {
    /// A script row.
    Script from core::Script {
        id: Uuid,
        tenant_id: String,
        name: String,
        slug: String,
        description: Option<String>,
        status: ScriptStatus,
        active_version_id: Option<Uuid>,
        latest_version: i32,
        labels: Vec<String>,
        intents: Vec<String>,
        language_codes: Vec<String>,
        embedding_key: Option<String>,
        created_by_id: String,
        updated_by_id: String,
        #[serde(serialize_with = "ts::serialize")]
        #[schema(value_type = String, format = DateTime, example = "2026-11-30T05:21:00.123Z")]
        created_at: DateTime<Utc>,
        #[serde(serialize_with = "ts::serialize")]
        #[schema(value_type = String, format = DateTime, example = "2026-11-30T05:21:00.123Z")]
        updated_at: DateTime<Utc>,
    }
}

/// A script with its active version in full (or `null`).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScriptView {
    #[serde(flatten)]
    pub script: Script,
    pub active_version: Option<Version>,
}

impl From<core::ScriptView> for ScriptView {
    fn from(v: core::ScriptView) -> Self {
        ScriptView {
            script: v.script.into(),
            active_version: v.active_version.map(Version::from),
        }
    }
}

view! {
    /// An immutable numbered version of a script's graph.
    Version from core::Version {
        id: Uuid,
        script_id: Uuid,
        version: i32,
        /// `{ "nodes": [...], "edges": [...] }` and anything else the editor keeps.
        #[schema(value_type = Object, example = json!({"nodes": [{"id": "n1"}], "edges": []}))]
        graph_json: Value,
        #[schema(value_type = Option<Object>)]
        variables_def: Option<Value>,
        changelog: Option<String>,
        /// Has ever been published (stays true).
        is_published: bool,
        /// Is the script's active version.
        is_active: bool,
        created_by_id: String,
        #[serde(serialize_with = "ts::serialize")]
        #[schema(value_type = String, format = DateTime)]
        created_at: DateTime<Utc>,
    }
}

view! {
    /// A version in lists: without `graphJson` and `variablesDef`.
    VersionSummary from core::VersionSummary {
        id: Uuid,
        script_id: Uuid,
        version: i32,
        changelog: Option<String>,
        is_published: bool,
        is_active: bool,
        created_by_id: String,
        #[serde(serialize_with = "ts::serialize")]
        #[schema(value_type = String, format = DateTime)]
        created_at: DateTime<Utc>,
    }
}

view! {
    /// One row of a script's audit trail.
    AuditEntry from core::AuditEntry {
        id: Uuid,
        script_id: Uuid,
        action: AuditAction,
        version: i32,
        actor_id: String,
        /// `{ "field": { "from": …, "to": … } }`; null on CREATE.
        #[schema(value_type = Option<Object>)]
        diff_json: Option<Value>,
        note: Option<String>,
        #[serde(serialize_with = "ts::serialize")]
        #[schema(value_type = String, format = DateTime)]
        created_at: DateTime<Utc>,
    }
}

/// `GET /scripts/:id/versions/:version/diff`: `against` (default
/// `version - 1`; 0 is the empty graph).
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DiffQuery {
    /// The version to compare with (0 or more; may be higher than `version`).
    #[param(minimum = 0)]
    pub against: Option<i64>,
}

impl DiffQuery {
    pub fn against(&self, version: i32) -> Result<i32, ApiError> {
        match self.against {
            None => Ok(version - 1),
            Some(n) => i32::try_from(n)
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| ApiError::field("against", "must be a version number (0 or more)")),
        }
    }
}

/// How one element list (`nodes` or `edges`) changed. Elements are matched by
/// their `id` member; one without an id, or whose id repeats in its graph, is
/// matched by its whole value (so it is only ever added or removed).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ElementChanges {
    /// Only in the newer side (`to`), in its order.
    #[schema(value_type = Vec<Object>)]
    pub added: Vec<Value>,
    /// Only in the older side (`from`), in its order.
    #[schema(value_type = Vec<Object>)]
    pub removed: Vec<Value>,
    pub changed: Vec<ChangedElement>,
}

/// An element on both sides with a different value.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"id": "n1", "before": {"id": "n1", "label": "Hello"}, "after": {"id": "n1", "label": "Hi"},
    "patch": [{"op": "replace", "path": "/label", "value": "Hi"}]}))]
pub struct ChangedElement {
    /// The element's `id` (a string or a number).
    #[schema(value_type = Object)]
    pub id: Value,
    #[schema(value_type = Object)]
    pub before: Value,
    #[schema(value_type = Object)]
    pub after: Value,
    /// RFC 6902 operations that turn `before` into `after`.
    #[schema(value_type = Vec<Object>)]
    pub patch: Value,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiffSummary {
    pub nodes_added: usize,
    pub nodes_removed: usize,
    pub nodes_changed: usize,
    pub edges_added: usize,
    pub edges_removed: usize,
    pub edges_changed: usize,
}

/// What changed from version `from` to version `to`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"scriptId": "0193a0a0-0000-7000-8000-000000000001", "from": 1, "to": 2,
    "nodes": {"added": [{"id": "n2"}], "removed": [], "changed": [{"id": "n1", "before": {"id": "n1", "label": "Hello"},
        "after": {"id": "n1", "label": "Hi"}, "patch": [{"op": "replace", "path": "/label", "value": "Hi"}]}]},
    "edges": {"added": [{"id": "e1", "from": "n1", "to": "n2"}], "removed": [], "changed": []},
    "variablesDef": [{"op": "add", "path": "/email", "value": "string"}], "graph": [],
    "summary": {"nodesAdded": 1, "nodesRemoved": 0, "nodesChanged": 1, "edgesAdded": 1, "edgesRemoved": 0, "edgesChanged": 0}}))]
pub struct VersionDiff {
    pub script_id: Uuid,
    /// The older side: `against`.
    pub from: i32,
    /// The newer side: `version`.
    pub to: i32,
    pub nodes: ElementChanges,
    pub edges: ElementChanges,
    /// RFC 6902 operations that turn the old `variablesDef` into the new one.
    #[schema(value_type = Vec<Object>)]
    pub variables_def: Value,
    /// RFC 6902 operations on the `graphJson` members other than `nodes` and `edges`.
    #[schema(value_type = Vec<Object>)]
    pub graph: Value,
    pub summary: DiffSummary,
}

fn ops(patch: &impl Serialize) -> Value {
    serde_json::to_value(patch).unwrap_or_else(|_| Value::Array(Vec::new()))
}

impl ElementChanges {
    fn from(d: core::history::ElementDiff) -> Self {
        ElementChanges {
            added: d.added,
            removed: d.removed,
            changed: d
                .changed
                .into_iter()
                .map(|c| ChangedElement {
                    patch: ops(&c.patch),
                    id: c.id,
                    before: c.before,
                    after: c.after,
                })
                .collect(),
        }
    }
}

impl VersionDiff {
    pub fn new(script_id: Uuid, from: i32, to: i32, d: core::history::GraphDiff) -> Self {
        let s = d.summary;
        VersionDiff {
            script_id,
            from,
            to,
            variables_def: ops(&d.variables_def),
            graph: ops(&d.graph),
            nodes: ElementChanges::from(d.nodes),
            edges: ElementChanges::from(d.edges),
            summary: DiffSummary {
                nodes_added: s.nodes_added,
                nodes_removed: s.nodes_removed,
                nodes_changed: s.nodes_changed,
                edges_added: s.edges_added,
                edges_removed: s.edges_removed,
                edges_changed: s.edges_changed,
            },
        }
    }
}
