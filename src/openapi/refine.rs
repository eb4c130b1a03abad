//! What the annotations cannot say, applied to the collected document as
//! JSON, so that generated clients (openapi-typescript, openapi-python-client)
//! get the types the server really speaks: free-form objects open to any
//! member, the graph's `nodes` and `edges`, every always-present response
//! field `required`, page items by reference, the server's enums and bounds,
//! plain string headers, the response headers scriptd sends, and `servers`.

use serde_json::{json, Map, Value};

use crate::http::cursor::MAX_LIMIT;
use crate::http::error::Code;
use crate::http::paths::{KEYED, PUBLIC};

const METHODS: [&str; 5] = ["get", "post", "patch", "put", "delete"];

/// Applies every rule below to `doc`.
pub fn refine(doc: &mut Value) {
    add_shared_schemas(doc);
    if let Some(schemas) = doc.pointer_mut("/components/schemas") {
        open_free_form_objects(schemas);
        retype_properties(schemas);
    }
    reference_page_items(doc);
    require_response_fields(doc);
    for (path, method, op) in operations(doc) {
        refine_operation(&path, &method, op);
    }
    if let Some(op) = doc.pointer_mut("/paths/~1events~1stream/get") {
        describe_event_stream(op);
    }
    doc["servers"] = json!([{ "url": "http://127.0.0.1:8080",
        "description": "scriptd serve with the default configuration" }]);
}

/// Every operation, with its path and method.
fn operations(doc: &mut Value) -> Vec<(String, String, &mut Value)> {
    let Some(Value::Object(paths)) = doc.get_mut("paths") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (path, item) in paths.iter_mut() {
        if let Value::Object(item) = item {
            for (method, op) in item.iter_mut() {
                if METHODS.contains(&method.as_str()) {
                    out.push((path.clone(), method.clone(), op));
                }
            }
        }
    }
    out
}

fn add_shared_schemas(doc: &mut Value) {
    let schemas = &mut doc["components"]["schemas"];
    let free = json!({ "type": "object", "additionalProperties": true });
    schemas["Graph"] = json!({
        "type": "object",
        "description": "A script's graph: `nodes` and `edges`, each an array of objects, and anything else the editor keeps.",
        "required": ["nodes", "edges"],
        "properties": {
            "nodes": { "type": "array", "items": free },
            "edges": { "type": "array", "items": free },
        },
        "additionalProperties": true,
    });
    schemas["FieldError"] = json!({
        "type": "object",
        "required": ["field", "message"],
        "properties": { "field": { "type": "string" }, "message": { "type": "string" } },
    });
    schemas["ErrorDetails"] = json!({
        "type": "object",
        "description": "`fields` for VALIDATION_FAILED; `latestVersion` for VERSION_CONFLICT and MERGE_CONFLICT, \
            with `conflicts` for MERGE_CONFLICT; other codes may carry other members (e.g. `status` for COMMAND_FINAL).",
        "properties": {
            "fields": { "type": "array", "items": { "$ref": "#/components/schemas/FieldError" } },
            "latestVersion": { "type": "integer", "minimum": 0 },
            "conflicts": { "type": "array", "items": { "$ref": "#/components/schemas/MergeConflict" } },
        },
        "additionalProperties": true,
    });
    schemas["MergeConflict"] = json!({
        "type": "object",
        "description": "One element, member or key that both sides changed differently since the base. \
            A side where it is missing (deleted, or never there) is null.",
        "required": ["kind", "id", "base", "theirs", "ours"],
        "properties": {
            "kind": { "type": "string", "enum": ["node", "edge", "graph", "variablesDef"] },
            "id": { "description": "The element's id; for graph and variablesDef the member or key name." },
            "base": {}, "theirs": {}, "ours": {},
        },
        "example": { "kind": "node", "id": "n1", "base": { "id": "n1", "text": "Hi" },
            "theirs": { "id": "n1", "text": "Hello" }, "ours": null },
    });
    schemas["SseControl"] = json!({
        "type": "object",
        "description": "The data of the `ping` and `reset` events (which carry no id).",
        "required": ["occurredAt"],
        "properties": { "occurredAt": { "type": "string", "format": "date-time" } },
    });
}

fn is_object_type(t: Option<&Value>) -> bool {
    match t {
        Some(Value::String(s)) => s == "object",
        Some(Value::Array(a)) => a.iter().any(|v| v == "object"),
        _ => false,
    }
}

/// `{"type": "object"}` without members is free-form: any members.
fn open_free_form_objects(v: &mut Value) {
    match v {
        Value::Object(o) => {
            if is_object_type(o.get("type"))
                && !o.contains_key("properties")
                && !o.contains_key("additionalProperties")
            {
                o.insert("additionalProperties".into(), Value::Bool(true));
            }
            for (_, child) in o.iter_mut() {
                open_free_form_objects(child);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(open_free_form_objects),
        _ => {}
    }
}

/// The properties whose schema the annotations cannot express.
fn retype_properties(schemas: &mut Value) {
    let Value::Object(all) = schemas else { return };
    for (name, schema) in all.iter_mut() {
        for props in property_maps(schema) {
            if let Some(g) = props.get_mut("graphJson") {
                let description = g.get("description").cloned();
                *g = json!({ "$ref": "#/components/schemas/Graph" });
                if let Some(d) = description {
                    g["description"] = d;
                }
            }
            if let Some(j) = props.get_mut("jsonVal") {
                *j = if name == "VarItem" {
                    json!({ "description": "Any JSON value but null (an object, a list, a string, a number, a boolean).",
                        "not": { "type": "null" } })
                } else {
                    json!({ "description": "The value of a `json` variable (any JSON value); null for the other types." })
                };
            }
        }
        match name.as_str() {
            "FinishRequest" => {
                schema["properties"]["status"] = json!({ "type": "string",
                    "enum": ["SUCCEEDED", "FAILED", "CANCELLED"],
                    "description": "How the run ended." });
            }
            "ErrorBody" => {
                let codes: Vec<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
                schema["properties"]["code"] = json!({ "type": "string", "enum": codes,
                    "description": "One of the contract's error codes." });
                schema["properties"]["details"] = json!({ "$ref": "#/components/schemas/ErrorDetails",
                    "description": "Present when there is more to say, e.g. the invalid fields." });
            }
            _ => {}
        }
    }
}

/// The `properties` maps of a schema, its `allOf` parts included.
fn property_maps(schema: &mut Value) -> Vec<&mut Map<String, Value>> {
    let mut out = Vec::new();
    let Value::Object(o) = schema else { return out };
    let (mut props, mut parts) = (None, None);
    for (k, v) in o.iter_mut() {
        match k.as_str() {
            "properties" => props = Some(v),
            "allOf" => parts = Some(v),
            _ => {}
        }
    }
    if let Some(Value::Object(p)) = props {
        out.push(p);
    }
    if let Some(Value::Array(parts)) = parts {
        for part in parts.iter_mut() {
            out.extend(property_maps(part));
        }
    }
    out
}

/// `Page_X` lists `X` by reference (one generated type per resource).
fn reference_page_items(doc: &mut Value) {
    let Some(Value::Object(schemas)) = doc.pointer_mut("/components/schemas") else {
        return;
    };
    let names: Vec<String> = schemas.keys().cloned().collect();
    for name in &names {
        let Some(item) = name.strip_prefix("Page_") else {
            continue;
        };
        if names.iter().any(|n| n == item) {
            schemas[name]["properties"]["items"]["items"] =
                json!({ "$ref": format!("#/components/schemas/{item}") });
            let required = &mut schemas[name]["required"];
            *required = json!(["items", "nextCursor"]);
        }
    }
}

/// The schema names `v` refers to, directly or through other schemas.
fn referenced(v: &Value, schemas: &Value, seen: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.get("$ref") {
                if let Some(name) = r.strip_prefix("#/components/schemas/") {
                    if !seen.iter().any(|s| s == name) {
                        seen.push(name.to_string());
                        if let Some(s) = schemas.get(name) {
                            referenced(s, schemas, seen);
                        }
                    }
                }
            }
            o.values().for_each(|c| referenced(c, schemas, seen));
        }
        Value::Array(a) => a.iter().for_each(|c| referenced(c, schemas, seen)),
        _ => {}
    }
}

/// Response schemas serialize every field (null when absent), so each is
/// `required`; schemas also used in requests are left alone. ErrorBody's
/// `details` is the one field left out when empty.
fn require_response_fields(doc: &mut Value) {
    let schemas = doc["components"]["schemas"].clone();
    let (mut out, mut inp) = (Vec::new(), Vec::new());
    if let Some(Value::Object(paths)) = doc.get("paths") {
        for item in paths.values() {
            for m in METHODS {
                let Some(op) = item.get(m) else { continue };
                referenced(&op["responses"], &schemas, &mut out);
                referenced(&op["requestBody"], &schemas, &mut inp);
            }
        }
    }
    let Some(Value::Object(all)) = doc.pointer_mut("/components/schemas") else {
        return;
    };
    // ErrorDetails: its members depend on the code.
    for name in out
        .iter()
        .filter(|n| !inp.contains(n) && *n != "ErrorDetails")
    {
        if let Some(schema) = all.get_mut(name.as_str()) {
            require_all(schema, name == "ErrorBody");
        }
    }
}

fn require_all(schema: &mut Value, keep_details_optional: bool) {
    if let Some(Value::Object(props)) = schema.get("properties") {
        let keys: Vec<Value> = props
            .keys()
            .filter(|k| !(keep_details_optional && *k == "details"))
            .map(|k| Value::String(k.clone()))
            .collect();
        schema["required"] = Value::Array(keys);
    }
    if let Some(Value::Array(parts)) = schema.get_mut("allOf") {
        for part in parts.iter_mut().filter(|p| p.get("properties").is_some()) {
            require_all(part, keep_details_optional);
        }
    }
}

/// The events of `GET /events/stream`, by name, with their data schemas.
fn describe_event_stream(op: &mut Value) {
    let events = [
        ("Run.Started.v1", "a run started"),
        (
            "Run.VarsUpserted.v1",
            "variables of a run were written (`payload.keys`)",
        ),
        ("Run.Finished.v1", "a run finished"),
        (
            "Command.Completed.v1",
            "a command completed without an event of its own",
        ),
        (
            "Command.Failed.v1",
            "a command failed for good (`payload.error`)",
        ),
        (
            "<handler event>",
            "a command's own completion event, e.g. `Contacts.Upserted.v1`",
        ),
    ];
    let mut text = String::from(
        "A `text/event-stream`. Each event has `id: <sequence>`, `event: <name>` and `data: <EventData JSON>` \
         (schema `EventData`); `ping` (every `events.keepalive_secs`) and `reset` (the Last-Event-ID is outside \
         the retained history) carry no id and `SseControl` data. Event names:\n",
    );
    for (name, what) in events {
        text.push_str(&format!("- `{name}`: {what}; data `EventData`\n"));
    }
    text.push_str("- `ping`, `reset`: data `SseControl`\n");
    op["description"] = Value::String(text.clone());
    if let Some(ok) = op.pointer_mut("/responses/200") {
        ok["description"] = Value::String(text);
        ok["content"]["text/event-stream"]["schema"] = json!({
            "type": "string",
            "description": "Server-Sent Events; each `data` is an `EventData` or, for `ping` and `reset`, an `SseControl`.",
        });
        ok["x-sse-data"] = json!({ "oneOf": [
            { "$ref": "#/components/schemas/EventData" },
            { "$ref": "#/components/schemas/SseControl" },
        ] });
    }
}

fn header(description: &str, schema: Value) -> Value {
    json!({ "description": description, "schema": schema })
}

/// A header parameter whose name, without case and punctuation, is that of
/// a path or query parameter of the same operation (`Correlation-Id` and
/// `correlationId`, `Last-Event-ID` and `lastEventId`) makes generators
/// rename both (`correlation_id_path`, `correlation_id_header`). The header
/// still works (the info and the parameter descriptions say so); it is just
/// not listed twice.
fn drop_colliding_headers(op: &mut Value) {
    let norm = |v: &Value| {
        v["name"]
            .as_str()
            .unwrap_or_default()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>()
            .to_ascii_lowercase()
    };
    let Some(Value::Array(params)) = op.get_mut("parameters") else {
        return;
    };
    let others: Vec<String> = params
        .iter()
        .filter(|p| p["in"] != "header")
        .map(norm)
        .collect();
    params.retain(|p| p["in"] != "header" || !others.contains(&norm(p)));
}

/// Parameters, bodies, security and response headers of one operation.
fn refine_operation(path: &str, method: &str, op: &mut Value) {
    if let Some(Value::Array(params)) = op.get_mut("parameters") {
        for p in params.iter_mut() {
            if p["in"] == "header" && p["schema"]["type"].is_array() {
                p["schema"]["type"] = json!("string");
            }
            if p["in"] == "query" && p["name"] == "limit" {
                p["schema"]["minimum"] = json!(1);
                p["schema"]["maximum"] = json!(MAX_LIMIT);
                p["schema"]["default"] = json!(crate::http::cursor::DEFAULT_LIMIT);
            }
        }
    }
    drop_colliding_headers(op);
    if path.ends_with("/publish") {
        op["requestBody"]["required"] = json!(false);
    }
    if PUBLIC.contains(&path) {
        op["security"] = json!([]);
    }
    let keyed = KEYED.contains(&(path, method));
    let Some(Value::Object(responses)) = op.get_mut("responses") else {
        return;
    };
    for (status, r) in responses.iter_mut() {
        let headers = r
            .as_object_mut()
            .map(|o| o.entry("headers").or_insert_with(|| json!({})));
        let Some(headers) = headers else { continue };
        headers["Correlation-Id"] = header(
            "The request's Correlation-Id, or a new UUID",
            json!({ "type": "string" }),
        );
        if status == "401" {
            headers["WWW-Authenticate"] = header("`Bearer`", json!({ "type": "string" }));
        }
        if keyed {
            headers["Idempotency-TTL"] = header(
                "Seconds an Idempotency-Key is kept",
                json!({ "type": "integer" }),
            );
            headers["Idempotent-Replayed"] = header(
                "`true` on a replay of the first response",
                json!({ "type": "string", "enum": ["true"] }),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_form_objects_open_and_members_stay_closed() {
        let mut v = json!({"a": {"type": "object"}, "b": {"type": ["object", "null"]},
            "c": {"type": "object", "properties": {"x": {"type": "object"}}}});
        open_free_form_objects(&mut v);
        assert_eq!(v["a"]["additionalProperties"], true);
        assert_eq!(v["b"]["additionalProperties"], true);
        assert!(v["c"].get("additionalProperties").is_none());
        assert_eq!(v["c"]["properties"]["x"]["additionalProperties"], true);
    }
}
