//! The OpenAPI document covers exactly the routes the app registers, which
//! are exactly the contract's.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::Value;

use crate::helpers::*;

/// The routes of ../shared/API.md.
const CONTRACT: &[(&str, &str)] = &[
    ("POST", "/scripts"),
    ("GET", "/scripts"),
    ("GET", "/scripts/{id}"),
    ("PATCH", "/scripts/{id}"),
    ("POST", "/scripts/{id}/versions"),
    ("POST", "/scripts/{id}/versions/{version}/publish"),
    ("GET", "/scripts/{id}/versions"),
    ("GET", "/scripts/{id}/versions/{version}"),
    ("GET", "/scripts/{id}/versions/{version}/diff"),
    ("GET", "/scripts/{id}/audit"),
    ("POST", "/runs"),
    ("POST", "/runs/{runId}/vars"),
    ("POST", "/runs/{runId}/finish"),
    ("GET", "/runs"),
    ("GET", "/runs/{runId}"),
    ("GET", "/runs/{runId}/stream"),
    ("POST", "/commands"),
    ("GET", "/commands/{correlationId}"),
    ("POST", "/commands/{correlationId}/complete"),
    ("GET", "/events/stream"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
    ("GET", "/metrics"),
    ("GET", "/admin/actors"),
];

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "patch", "put", "delete"].contains(&method.as_str()) {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

/// Every route attribute (`#[get("/x")]`, …) in src/routes.
fn declared_in_source() -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/routes");
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        assert!(
            !text.contains(".route(") && !text.contains("web::resource("),
            "routes must be registered with #[utoipa::path] handlers"
        );
        for line in text.lines().map(str::trim) {
            for method in ["get", "post", "patch", "put", "delete"] {
                if let Some(rest) = line.strip_prefix(&format!("#[{method}(\"")) {
                    let path = rest.split('"').next().unwrap();
                    out.insert((method.to_uppercase(), path.to_string()));
                }
            }
        }
    }
    out
}

/// `GET /openapi.json`, answered 200 without auth.
async fn served_document(app: &TestApp) -> Value {
    send_json(app.raw(Method::GET, "/openapi.json"), 200).await
}

#[actix_web::test]
async fn the_document_the_source_and_the_contract_list_the_same_routes() {
    let app = spawn_app().await;
    let doc = served_document(&app).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let documented = documented(&doc);
    let contract: BTreeSet<(String, String)> = CONTRACT
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let source = declared_in_source();
    assert_eq!(
        documented, source,
        "a handler is registered but not documented, or the other way round"
    );
    assert_eq!(documented, contract, "the document and the contract differ");
    // The same as `scriptd openapi`.
    assert_eq!(doc, scriptd::openapi::document());
}

#[actix_web::test]
async fn every_documented_route_is_served() {
    let app = spawn_app().await;
    let doc = served_document(&app).await;
    let id = uuid::Uuid::now_v7().to_string();
    for (method, path) in documented(&doc) {
        if path == "/events/stream" {
            continue;
        }
        let concrete = path
            .replace("{id}", &id)
            .replace("{runId}", &id)
            .replace("{correlationId}", &id)
            .replace("{version}", "1");
        let method_ = Method::from_bytes(method.as_bytes()).unwrap();
        let req = app.req(method_, &concrete);
        let res = send(req.header("content-type", "application/json").body("{}")).await;
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        let unrouted = status == 405
            || body["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("no route"));
        assert!(
            !unrouted,
            "{method} {path} is documented but not served: {status} {body}"
        );
    }
}

#[actix_web::test]
async fn the_document_describes_auth_headers_errors_and_the_stream() {
    let doc = scriptd::openapi::document();
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(
        doc["paths"]["/healthz"]["get"]["security"],
        serde_json::json!([])
    );
    let stream = &doc["paths"]["/events/stream"]["get"];
    assert!(stream["responses"]["200"]["content"]["text/event-stream"].is_object());
    let post_versions = &doc["paths"]["/scripts/{id}/versions"]["post"];
    let params: Vec<&str> = post_versions["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for p in ["x-tenant-id", "Idempotency-Key", "Correlation-Id"] {
        assert!(params.contains(&p), "{params:?}");
    }
    for code in [
        "400", "401", "404", "409", "413", "422", "429", "500", "503",
    ] {
        assert!(
            post_versions["responses"][code].is_object(),
            "missing {code}"
        );
    }
    let patch = &doc["paths"]["/scripts/{id}"]["patch"];
    assert!(patch["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "If-Match"));
    assert!(doc["components"]["schemas"]["ErrorBody"]["example"].is_object());
}

/// The rules generated clients depend on (openapi-typescript renders an
/// object without members as `Record<string, never>`; optional response
/// fields become `T | undefined`; inlined page items become one type per page).
#[actix_web::test]
async fn the_document_types_what_clients_generate_from() {
    use serde_json::json;
    let doc = scriptd::openapi::document();
    let s = &doc["components"]["schemas"];
    assert_eq!(
        s["CreateVersionRequest"]["properties"]["graphJson"]["$ref"],
        "#/components/schemas/Graph"
    );
    assert_eq!(
        s["Version"]["properties"]["graphJson"]["$ref"],
        "#/components/schemas/Graph"
    );
    assert_eq!(s["Graph"]["required"], json!(["nodes", "edges"]));
    for (schema, field) in [
        ("CommandRequest", "payload"),
        ("CommandRequest", "context"),
        ("EventData", "payload"),
        ("Version", "variablesDef"),
    ] {
        assert_eq!(
            s[schema]["properties"][field]["additionalProperties"], true,
            "{schema}.{field}"
        );
    }
    assert_eq!(
        s["VarItem"]["properties"]["jsonVal"]["not"],
        json!({"type": "null"})
    );
    assert!(s["VarItem"]["properties"]["jsonVal"].get("type").is_none());
    for (page, item) in [
        ("Page_Script", "Script"),
        ("Page_VersionSummary", "VersionSummary"),
        ("Page_AuditEntry", "AuditEntry"),
        ("Page_Run", "Run"),
    ] {
        assert_eq!(
            s[page]["properties"]["items"]["items"]["$ref"],
            format!("#/components/schemas/{item}")
        );
        assert_eq!(s[page]["required"], json!(["items", "nextCursor"]));
    }
    let required = |name: &str| s[name]["required"].as_array().unwrap().clone();
    for f in ["boolVal", "jsonVal", "numVal", "strVal", "key", "updatedAt"] {
        assert!(
            required("RunVariable").contains(&json!(f)),
            "RunVariable.{f}"
        );
    }
    assert!(required("EventData").contains(&json!("correlationId")));
    assert!(required("CommandView").contains(&json!("result")));
    assert_eq!(
        s["ScriptView"]["allOf"][1]["required"],
        json!(["activeVersion"])
    );
    assert_eq!(required("ErrorBody"), vec![json!("code"), json!("message")]);
    assert_eq!(
        s["FinishRequest"]["properties"]["status"]["enum"],
        json!(["SUCCEEDED", "FAILED", "CANCELLED"])
    );
    assert!(s["ErrorBody"]["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .contains(&json!("COMMAND_FINAL")));
    let publish = &doc["paths"]["/scripts/{id}/versions/{version}/publish"]["post"];
    assert_eq!(publish["requestBody"]["required"], false);
    let list = &doc["paths"]["/scripts"]["get"];
    for p in list["parameters"].as_array().unwrap() {
        if p["in"] == "header" {
            assert_eq!(p["schema"]["type"], "string", "{p}");
        }
        if p["name"] == "limit" {
            assert_eq!(
                (&p["schema"]["minimum"], &p["schema"]["maximum"]),
                (&json!(1), &json!(200))
            );
        }
    }
    let post = &doc["paths"]["/commands"]["post"]["responses"];
    for h in ["Correlation-Id", "Idempotency-TTL", "Idempotent-Replayed"] {
        assert!(post["202"]["headers"][h].is_object(), "{h}");
    }
    assert!(post["401"]["headers"]["WWW-Authenticate"].is_object());
    assert!(doc["servers"][0]["url"].is_string());
    let stream = doc["paths"]["/events/stream"]["get"]["description"]
        .as_str()
        .unwrap();
    for name in [
        "Run.Started.v1",
        "Command.Failed.v1",
        "ping",
        "reset",
        "EventData",
        "SseControl",
    ] {
        assert!(stream.contains(name), "{name}");
    }
}

#[actix_web::test]
async fn the_reference_page_is_served_offline_without_auth() {
    let app = spawn_app().await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = send(no_redirects.get(app.url("/docs"))).await;
    assert_eq!(res.status(), 307);
    assert_eq!(res.headers()["location"], "/docs/");
    let res = send(app.raw(Method::GET, "/docs/")).await;
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = res.text().await.unwrap();
    // Every asset is relative: served by scriptd, nothing from elsewhere.
    assert!(page.contains("./swagger-ui-bundle.js"), "{page}");
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "{page}"
    );
    let init = send(app.raw(Method::GET, "/docs/swagger-initializer.js")).await;
    assert_eq!(init.status(), 200);
    assert!(init
        .text()
        .await
        .unwrap()
        .contains("\"url\": \"/openapi.json\""));
    let bundle = send(app.raw(Method::GET, "/docs/swagger-ui-bundle.js")).await;
    assert_eq!(bundle.status(), 200);
    assert!(bundle.bytes().await.unwrap().len() > 100_000);
    send_err(app.raw(Method::GET, "/docs/nope.js"), 404, "NOT_FOUND").await;
}

/// Editor history in the document: the diff operation and its schema, the
/// restore and merge members with examples, and MERGE_CONFLICT's details.
#[actix_web::test]
async fn diff_restore_and_merge_are_documented() {
    let app = spawn_app().await;
    let doc = served_document(&app).await;
    let op = &doc["paths"]["/scripts/{id}/versions/{version}/diff"]["get"];
    assert_eq!(
        op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/VersionDiff"
    );
    let params: Vec<&str> = op["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(params.contains(&"against"), "{params:?}");
    let s = &doc["components"]["schemas"];
    for field in [
        "scriptId",
        "from",
        "to",
        "nodes",
        "edges",
        "variablesDef",
        "graph",
        "summary",
    ] {
        assert!(
            s["VersionDiff"]["properties"][field].is_object(),
            "VersionDiff.{field}"
        );
    }
    assert!(s["VersionDiff"]["example"].is_object());
    let create = &s["CreateVersionRequest"];
    assert_eq!(create["properties"]["fromVersion"]["minimum"], 1);
    assert!(create["properties"]["merge"].is_object());
    assert_eq!(create["examples"].as_array().map(Vec::len), Some(3));
    let codes = s["ErrorBody"]["properties"]["code"]["enum"]
        .as_array()
        .unwrap();
    assert!(codes.contains(&serde_json::json!("MERGE_CONFLICT")));
    assert_eq!(
        s["ErrorDetails"]["properties"]["conflicts"]["items"]["$ref"],
        "#/components/schemas/MergeConflict"
    );
    assert_eq!(
        s["MergeConflict"]["required"],
        serde_json::json!(["base", "id", "kind", "ours", "theirs"])
    );
}
