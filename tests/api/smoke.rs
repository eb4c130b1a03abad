//! The seed's three smoke flows, exactly.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

/// The seed's first steps: script "smoke", an empty version, published.
/// Returns the script id and the version.
async fn smoke_script(app: &TestApp) -> (String, Value) {
    let script = json!({ "name": "Smoke", "slug": "smoke" });
    let s = app.post_json("/scripts", &script, 201).await;
    let id = str_of(&s["id"]);
    let graph = json!({ "graphJson": { "nodes": [], "edges": [] } });
    let v = app
        .post_json(&format!("/scripts/{id}/versions"), &graph, 201)
        .await;
    publish_version(app, &id, &v["version"]).await;
    (id, v)
}

#[actix_web::test]
async fn script_version_publish_shows_the_active_version() {
    let app = spawn_app().await;
    let (id, v) = smoke_script(&app).await;
    let got = app.get_json(&format!("/scripts/{id}"), 200).await;
    assert_eq!(got["activeVersionId"], v["id"]);
    assert_eq!(got["activeVersion"]["id"], v["id"]);
}

#[actix_web::test]
async fn run_upsert_finish() {
    let app = spawn_app().await;
    let (id, _) = smoke_script(&app).await;
    let run = app
        .post_json("/runs", &json!({ "scriptId": id }), 201)
        .await;
    let run_id = run["runId"].as_str().unwrap();
    let vars = json!([{ "key": "name", "strVal": "Ana" }]);
    let vars = app
        .post_json(&format!("/runs/{run_id}/vars"), &vars, 200)
        .await;
    assert_eq!(vars["upserted"], 1);
    let done = json_of(finish(&app, run_id, "SUCCEEDED").await, 200).await;
    assert_eq!(done["status"], "SUCCEEDED");
    let got = app.get_json(&format!("/runs/{run_id}"), 200).await;
    assert_eq!(got["vars"][0]["strVal"], "Ana");
}

#[actix_web::test]
async fn command_pending_then_completed_on_the_stream() {
    let app = spawn_app_with(|s| {
        s.outbox.autorun = false;
        s.outbox.dev_delay_min_ms = 0;
        s.outbox.dev_delay_max_ms = 0;
    })
    .await;
    let cid = uuid::Uuid::now_v7().to_string();
    let mut stream = app.sse(TENANT, &format!("&correlationId={cid}")).await;
    let req = app
        .req(Method::POST, "/commands")
        .json(&json!({ "command": "Contacts.UpsertAndLink.v1", "correlationId": cid, "actor": { "userId": "u_1" } }));
    send_json(req, 202).await;
    let db = app.db().await;
    let sql = "SELECT status FROM command_outbox WHERE correlation_id = $1";
    let status: String = scalar(&db, sql, &[&uuid::Uuid::parse_str(&cid).unwrap()]).await;
    assert_eq!(status, "PENDING");
    app.outbox().poll_once().await.unwrap();
    let ev = stream.next(Duration::from_secs(10)).await.unwrap();
    assert_eq!(ev.json()["correlationId"], cid.as_str());
    assert_eq!(ev.event, "Contacts.Upserted.v1");
}
