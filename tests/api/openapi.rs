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
    ("GET", "/scripts/{id}/audit"),
    ("POST", "/runs"),
    ("POST", "/runs/{runId}/vars"),
    ("POST", "/runs/{runId}/finish"),
    ("GET", "/runs"),
    ("GET", "/runs/{runId}"),
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
    assert_eq!(
        doc,
        serde_json::to_value(scriptd::openapi::document()).unwrap()
    );
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
    let doc = serde_json::to_value(scriptd::openapi::document()).unwrap();
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(
        doc["paths"]["/healthz"]["get"]["security"],
        serde_json::json!([{}])
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
