//! Scripts, versions and audit entries as clients see them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::ts;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ScriptStatus {
    Draft,
    Published,
    Archived,
}

impl ScriptStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ScriptStatus::Draft => "DRAFT",
            ScriptStatus::Published => "PUBLISHED",
            ScriptStatus::Archived => "ARCHIVED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "DRAFT" => Some(ScriptStatus::Draft),
            "PUBLISHED" => Some(ScriptStatus::Published),
            "ARCHIVED" => Some(ScriptStatus::Archived),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuditAction {
    Create,
    Update,
    Publish,
    Rollback,
    Archive,
}

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Create => "CREATE",
            AuditAction::Update => "UPDATE",
            AuditAction::Publish => "PUBLISH",
            AuditAction::Rollback => "ROLLBACK",
            AuditAction::Archive => "ARCHIVE",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "CREATE" => Some(AuditAction::Create),
            "UPDATE" => Some(AuditAction::Update),
            "PUBLISH" => Some(AuditAction::Publish),
            "ROLLBACK" => Some(AuditAction::Rollback),
            "ARCHIVE" => Some(AuditAction::Archive),
            _ => None,
        }
    }
}

/// A script row.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
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
    #[serde(serialize_with = "ts::serialize")]
    #[schema(value_type = String, format = DateTime, example = "2026-11-30T05:21:00.123Z")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "ts::serialize")]
    #[schema(value_type = String, format = DateTime, example = "2026-11-30T05:21:00.123Z")]
    pub updated_at: DateTime<Utc>,
    /// Bumped by every change of the row; the ETag is derived from it.
    #[serde(skip)]
    pub revision: i64,
}

impl Script {
    /// The strong ETag of the current revision.
    pub fn etag(&self) -> String {
        format!("\"{}-{}\"", self.id.simple(), self.revision)
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

/// An immutable numbered version of a script's graph.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Version {
    pub id: Uuid,
    pub script_id: Uuid,
    pub version: i32,
    /// `{ "nodes": [...], "edges": [...] }` and anything else the editor keeps.
    #[schema(value_type = Object, example = json!({"nodes": [{"id": "n1"}], "edges": []}))]
    pub graph_json: Value,
    #[schema(value_type = Option<Object>)]
    pub variables_def: Option<Value>,
    pub changelog: Option<String>,
    /// Has ever been published (stays true).
    pub is_published: bool,
    /// Is the script's active version.
    pub is_active: bool,
    pub created_by_id: String,
    #[serde(serialize_with = "ts::serialize")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
}

/// A version in lists: without `graphJson` and `variablesDef`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionSummary {
    pub id: Uuid,
    pub script_id: Uuid,
    pub version: i32,
    pub changelog: Option<String>,
    pub is_published: bool,
    pub is_active: bool,
    pub created_by_id: String,
    #[serde(serialize_with = "ts::serialize")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
}

/// One row of a script's audit trail.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub id: Uuid,
    pub script_id: Uuid,
    pub action: AuditAction,
    pub version: i32,
    pub actor_id: String,
    /// `{ "field": { "from": …, "to": … } }`; null on CREATE.
    #[schema(value_type = Option<Object>)]
    pub diff_json: Option<Value>,
    pub note: Option<String>,
    #[serde(serialize_with = "ts::serialize")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
}

/// What `POST /scripts` creates.
#[derive(Debug, Clone)]
pub struct NewScript {
    pub name: String,
    pub slug: String,
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
    pub slug: Option<String>,
    pub description: Option<Option<String>>,
    pub labels: Option<Vec<String>>,
    pub intents: Option<Vec<String>>,
    pub language_codes: Option<Vec<String>>,
    pub embedding_key: Option<Option<String>>,
    pub status: Option<ScriptStatus>,
}

/// What a new version carries.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub graph_json: Value,
    pub variables_def: Option<Value>,
    pub changelog: Option<String>,
    pub note: Option<String>,
    pub base_version: Option<i32>,
}
