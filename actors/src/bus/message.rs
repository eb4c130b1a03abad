//! The two message bodies of the bus, as the contract spells them.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::domain::{Command, CommandName, Report};

/// Longest `error` kept from a completion (longer ones are cut).
pub const ERROR_MAX: usize = 4096;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Actor {
    pub user_id: String,
}

/// What a handler receives on `<prefix>.commands.<command>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandMessage {
    pub command_id: Uuid,
    pub command: String,
    pub correlation_id: Uuid,
    pub tenant_id: String,
    pub actor: Actor,
    pub context: Value,
    pub payload: Value,
    /// 1 for the first publish; a publish that failed is not an attempt.
    pub attempt: i32,
    pub created_at: String,
    /// Answer by then, or the attempt counts as timed out.
    pub deadline: String,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl CommandMessage {
    pub fn new(c: &Command, attempt: i32, deadline: DateTime<Utc>) -> Self {
        CommandMessage {
            command_id: c.id,
            command: c.command.clone(),
            correlation_id: c.correlation_id,
            tenant_id: c.tenant_id.clone(),
            actor: Actor {
                user_id: c.actor_user_id.clone(),
            },
            context: c.context.clone(),
            payload: c.payload.clone(),
            attempt,
            created_at: rfc3339(c.created_at),
            deadline: rfc3339(deadline),
        }
    }
}

/// A completion a handler publishes on `<prefix>.completions.<command>`.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionMessage {
    pub command_id: Uuid,
    pub tenant_id: String,
    pub report: Report,
}

impl CompletionMessage {
    /// Reads a completion body; `Err` says why it is malformed. Unknown
    /// fields are allowed (handlers may add their own).
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let value: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        let Value::Object(o) = value else {
            return Err("not a JSON object".into());
        };
        let command_id = o
            .get("commandId")
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or("commandId must be a UUID string")?;
        let tenant_id = o
            .get("tenantId")
            .and_then(Value::as_str)
            .ok_or("tenantId must be a string")?
            .to_string();
        let report = report(&o)?;
        Ok(CompletionMessage {
            command_id,
            tenant_id,
            report,
        })
    }

    /// The body a handler publishes (the dev handler, and tests).
    pub fn to_json(&self) -> Value {
        let r = &self.report;
        let mut o = serde_json::json!({
            "commandId": self.command_id,
            "tenantId": self.tenant_id,
            "success": r.success,
            "payload": r.payload,
        });
        if let Some(event) = &r.event {
            o["event"] = event.as_str().into();
        }
        if let Some(error) = &r.error {
            o["error"] = error.as_str().into();
        }
        if r.retry {
            o["retry"] = true.into();
        }
        if let Some(attempt) = r.attempt {
            o["attempt"] = attempt.into();
        }
        o
    }
}

fn optional<'a, T>(
    o: &'a Map<String, Value>,
    key: &str,
    read: impl Fn(&'a Value) -> Option<T>,
    want: &str,
) -> Result<Option<T>, String> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => read(v)
            .map(Some)
            .ok_or_else(|| format!("{key} must be {want}")),
    }
}

fn report(o: &Map<String, Value>) -> Result<Report, String> {
    let success = o
        .get("success")
        .and_then(Value::as_bool)
        .ok_or("success must be a boolean")?;
    let event = optional(o, "event", Value::as_str, "a command-style event name")?
        .map(|e| CommandName::parse(e).map(|_| e.to_string()))
        .transpose()
        .map_err(|why| format!("event {why}"))?;
    let payload =
        optional(o, "payload", |v| v.as_object().cloned(), "an object")?.unwrap_or_default();
    let error = optional(o, "error", Value::as_str, "a string")?.map(truncate);
    let retry = optional(o, "retry", Value::as_bool, "a boolean")?.unwrap_or(false);
    let attempt = optional(
        o,
        "attempt",
        |v| {
            v.as_i64()
                .filter(|a| *a >= 1)
                .and_then(|a| i32::try_from(a).ok())
        },
        "a positive integer",
    )?;
    if success && retry {
        return Err("success and retry are both true".into());
    }
    Ok(Report {
        event,
        success,
        payload: Value::Object(payload),
        error,
        retry,
        attempt,
    })
}

fn truncate(s: &str) -> String {
    if s.len() <= ERROR_MAX {
        return s.to_string();
    }
    let mut end = ERROR_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<CompletionMessage, String> {
        CompletionMessage::parse(v.to_string().as_bytes())
    }

    #[test]
    fn a_full_completion_reads_back() {
        let id = Uuid::now_v7();
        let m = parse(
            json!({"commandId": id, "tenantId": "t1", "event": "Contacts.Upserted.v1",
            "success": false, "payload": {"a": 1}, "error": "no", "attempt": 2, "extra": true}),
        )
        .unwrap();
        assert_eq!(m.command_id, id);
        assert_eq!(m.tenant_id, "t1");
        assert_eq!(
            m.report,
            Report {
                event: Some("Contacts.Upserted.v1".into()),
                success: false,
                payload: json!({"a": 1}),
                error: Some("no".into()),
                retry: false,
                attempt: Some(2),
            }
        );
        assert_eq!(
            CompletionMessage::parse(m.to_json().to_string().as_bytes()).unwrap(),
            m
        );
    }

    #[test]
    fn malformed_completions_say_why() {
        let id = Uuid::now_v7().to_string();
        let cases = [
            (json!([1]), "not a JSON object"),
            (json!({"tenantId": "t", "success": true}), "commandId"),
            (
                json!({"commandId": "x", "tenantId": "t", "success": true}),
                "commandId",
            ),
            (json!({"commandId": id, "success": true}), "tenantId"),
            (json!({"commandId": id, "tenantId": "t"}), "success"),
            (
                json!({"commandId": id, "tenantId": "t", "success": "yes"}),
                "success",
            ),
            (
                json!({"commandId": id, "tenantId": "t", "success": true, "event": "lower.case"}),
                "event",
            ),
            (
                json!({"commandId": id, "tenantId": "t", "success": true, "payload": [1]}),
                "payload",
            ),
            (
                json!({"commandId": id, "tenantId": "t", "success": false, "error": 5}),
                "error",
            ),
            (
                json!({"commandId": id, "tenantId": "t", "success": false, "attempt": 0}),
                "attempt",
            ),
            (
                json!({"commandId": id, "tenantId": "t", "success": false, "attempt": 1.5}),
                "attempt",
            ),
            (
                json!({"commandId": id, "tenantId": "t", "success": true, "retry": true}),
                "retry",
            ),
        ];
        for (body, needle) in cases {
            let why = parse(body.clone()).expect_err(&body.to_string());
            assert!(why.contains(needle), "{body}: {why}");
        }
        assert!(CompletionMessage::parse(b"{nope")
            .unwrap_err()
            .starts_with("not JSON"));
    }

    #[test]
    fn long_errors_are_cut_on_a_char_boundary() {
        let id = Uuid::now_v7();
        let long = "é".repeat(3000);
        let m = parse(json!({"commandId": id, "tenantId": "t", "success": false, "error": long}))
            .unwrap();
        let e = m.report.error.unwrap();
        assert!(e.len() <= ERROR_MAX && e.len() >= ERROR_MAX - 1);
    }
}
