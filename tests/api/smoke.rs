//! The seed's three smoke flows, exactly.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::helpers::*;

#[actix_web::test]
async fn script_version_publish_shows_the_active_version() {
    let app = spawn_app().await;
    let s = json_of(
        app.post("/scripts", &json!({ "name": "Smoke", "slug": "smoke" }))
            .await,
        201,
    )
    .await;
    let id = s["id"].as_str().unwrap();
    let v = json_of(
        app.post(
            &format!("/scripts/{id}/versions"),
            &json!({ "graphJson": { "nodes": [], "edges": [] } }),
        )
        .await,
        201,
    )
    .await;
    json_of(
        app.post(
            &format!("/scripts/{id}/versions/{}/publish", v["version"]),
            &json!({}),
        )
        .await,
        200,
    )
    .await;
    let got = json_of(app.get(&format!("/scripts/{id}")).await, 200).await;
    assert_eq!(got["activeVersionId"], v["id"]);
    assert_eq!(got["activeVersion"]["id"], v["id"]);
}

#[actix_web::test]
async fn run_upsert_finish() {
    let app = spawn_app().await;
    let s = json_of(
        app.post("/scripts", &json!({ "name": "Smoke", "slug": "smoke" }))
            .await,
        201,
    )
    .await;
    let id = s["id"].as_str().unwrap();
    json_of(
        app.post(
            &format!("/scripts/{id}/versions"),
            &json!({ "graphJson": { "nodes": [], "edges": [] } }),
        )
        .await,
        201,
    )
    .await;
    json_of(
        app.post(&format!("/scripts/{id}/versions/1/publish"), &json!({}))
            .await,
        200,
    )
    .await;
    let run = json_of(app.post("/runs", &json!({ "scriptId": id })).await, 201).await;
    let run_id = run["runId"].as_str().unwrap();
    let vars = json_of(
        app.post(
            &format!("/runs/{run_id}/vars"),
            &json!([{ "key": "name", "strVal": "Ana" }]),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(vars["upserted"], 1);
    let done = json_of(
        app.post(
            &format!("/runs/{run_id}/finish"),
            &json!({ "status": "SUCCEEDED" }),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(done["status"], "SUCCEEDED");
    let got = json_of(app.get(&format!("/runs/{run_id}")).await, 200).await;
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
    let res = app
        .req(Method::POST, "/commands")
        .json(&json!({ "command": "Contacts.UpsertAndLink.v1", "correlationId": cid, "actor": { "userId": "u_1" } }))
        .send()
        .await
        .unwrap();
    json_of(res, 202).await;
    let db = app.db().await;
    let status: String = db
        .query_one(
            "SELECT status FROM command_outbox WHERE correlation_id = $1",
            &[&uuid::Uuid::parse_str(&cid).unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "PENDING");
    app.outbox().poll_once().await.unwrap();
    let ev = stream.next(Duration::from_secs(10)).await.unwrap();
    assert_eq!(ev.json()["correlationId"], cid.as_str());
    assert_eq!(ev.event, "Contacts.Upserted.v1");
}
