//! Runs and run variables on the wire.

use std::collections::HashMap;

use actors::domain::{self as core, VarKey, VarUpsert, VarValue};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use validator::Validate;

use crate::dto::{ts, view, wire_enum};
use crate::http::error::{ApiError, FieldError};
use crate::http::extract::RequestBody;
use crate::http::validation as rules;
use crate::settings::LimitsSettings;

wire_enum!(RunStatus {
    Running,
    Succeeded,
    Failed,
    Cancelled
});

const MAX_ITEMS: usize = 500;

/// `POST /runs`.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"scriptId": "0193a0a0-0000-7000-8000-000000000001", "connectorType": "whatsapp", "connectorKey": "+5511999990000"}))]
pub struct StartRunRequest {
    /// Alternative to the `x-tenant-id` header.
    pub tenant_id: Option<String>,
    pub script_id: Uuid,
    /// Defaults to the script's active version.
    #[validate(range(min = 1))]
    #[schema(minimum = 1)]
    pub version: Option<i32>,
    /// Defaults to the caller's actor id.
    #[validate(custom(function = "rules::embedding_key"))]
    pub started_by_id: Option<String>,
    #[validate(custom(function = "rules::embedding_key"))]
    pub connector_type: Option<String>,
    #[validate(custom(function = "rules::embedding_key"))]
    pub connector_key: Option<String>,
}

impl RequestBody for StartRunRequest {}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunStarted {
    pub run_id: Uuid,
    pub run: Run,
}

/// One item of `POST /runs/:runId/vars`: exactly one non-null value.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"key": "customer.name", "strVal": "Ana"}))]
pub struct VarItem {
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,200}$")]
    pub key: String,
    pub str_val: Option<String>,
    /// A finite number.
    pub num_val: Option<f64>,
    pub bool_val: Option<bool>,
    /// Any JSON value but null.
    #[schema(value_type = Option<Object>)]
    pub json_val: Option<Value>,
}

/// The body of `POST /runs/:runId/vars`: 1..500 items; the last item per key wins.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(transparent)]
pub struct VarItems(pub Vec<VarItem>);

impl RequestBody for VarItems {
    fn limit(limits: &LimitsSettings) -> usize {
        limits.vars_body_bytes
    }
}

impl VarItems {
    /// Validates every item and keeps the last one per key, in first-seen order.
    pub fn into_upserts(self) -> Result<Vec<VarUpsert>, ApiError> {
        if self.0.is_empty() || self.0.len() > MAX_ITEMS {
            return Err(ApiError::field(
                "body",
                format!("must hold 1..{MAX_ITEMS} items"),
            ));
        }
        let mut errors = Vec::new();
        let mut out: Vec<VarUpsert> = Vec::with_capacity(self.0.len());
        let mut index: HashMap<String, usize> = HashMap::new();
        for (i, item) in self.0.into_iter().enumerate() {
            let key = VarKey::parse(&item.key);
            if let Err(m) = &key {
                errors.push(FieldError::new(format!("[{i}].key"), m.clone()));
            }
            let mut values = Vec::new();
            if let Some(s) = item.str_val {
                values.push(VarValue::Str(s));
            }
            if let Some(n) = item.num_val {
                if !n.is_finite() {
                    errors.push(FieldError::new(
                        format!("[{i}].numVal"),
                        "must be a finite number",
                    ));
                }
                values.push(VarValue::Num(n));
            }
            if let Some(b) = item.bool_val {
                values.push(VarValue::Bool(b));
            }
            if let Some(j) = item.json_val.filter(|j| !j.is_null()) {
                values.push(VarValue::Json(j));
            }
            let (Ok(key), 1) = (key, values.len()) else {
                if values.len() == 1 {
                    continue;
                }
                errors.push(FieldError::new(
                    format!("[{i}]"),
                    "exactly one of strVal, numVal, boolVal, jsonVal must be non-null",
                ));
                continue;
            };
            let upsert = VarUpsert {
                key,
                value: values.remove(0),
            };
            match index.get(upsert.key.as_str()) {
                Some(&at) => out[at] = upsert,
                None => {
                    index.insert(upsert.key.to_string(), out.len());
                    out.push(upsert);
                }
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(ApiError::validation(errors))
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VarsUpserted {
    pub run_id: Uuid,
    /// Distinct keys written.
    pub upserted: usize,
    /// The stored values of the keys touched, by key.
    pub vars: Vec<RunVariable>,
}

/// `POST /runs/:runId/finish`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"status": "SUCCEEDED"}))]
pub struct FinishRequest {
    /// SUCCEEDED, FAILED or CANCELLED.
    pub status: RunStatus,
}

impl RequestBody for FinishRequest {}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunWithVars {
    #[serde(flatten)]
    pub run: Run,
    /// Sorted by key.
    pub vars: Vec<RunVariable>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListRunsQuery {
    /// Alternative to the `x-tenant-id` header.
    pub tenant_id: Option<String>,
    pub script_id: Option<Uuid>,
    pub status: Option<RunStatus>,
    /// RFC 3339; inclusive bound on startedAt.
    pub from: Option<String>,
    /// RFC 3339; exclusive bound on startedAt.
    pub to: Option<String>,
    /// 1..200, default 50.
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

pub fn parse_time(field: &str, v: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    v.map(|s| {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| ApiError::field(field, "must be an RFC 3339 timestamp"))
    })
    .transpose()
}

view! {
    /// A run.
    Run from core::Run {
        id: Uuid,
        tenant_id: String,
        script_id: Uuid,
        version: i32,
        started_by_id: Option<String>,
        connector_type: Option<String>,
        connector_key: Option<String>,
        status: RunStatus,
        #[serde(serialize_with = "ts::serialize")]
        #[schema(value_type = String, format = DateTime)]
        started_at: DateTime<Utc>,
        #[serde(serialize_with = "ts::option::serialize")]
        #[schema(value_type = Option<String>, format = DateTime)]
        ended_at: Option<DateTime<Utc>>,
        /// The highest committed `seq` of the runner stream (0: never streamed).
        #[schema(minimum = 0)]
        stream_seq: i64,
        /// The last start, variable write (refreshed at most about once a
        /// second), finish or ping of an open runner stream.
        #[serde(serialize_with = "ts::serialize")]
        #[schema(value_type = String, format = DateTime)]
        last_activity_at: DateTime<Utc>,
    }
}

view! {
    /// A run variable: exactly one of the four values is set; all four are shown.
    RunVariable from core::RunVariable {
        key: String,
        str_val: Option<String>,
        num_val: Option<f64>,
        bool_val: Option<bool>,
        #[schema(value_type = Option<Object>)]
        json_val: Option<Value>,
        #[serde(serialize_with = "ts::serialize")]
        #[schema(value_type = String, format = DateTime)]
        updated_at: DateTime<Utc>,
    }
}
