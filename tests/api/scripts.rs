//! Scripts, versions, publish/rollback, audit, and the ScriptActor life cycle.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

pub async fn create_script(app: &TestApp, slug: &str) -> Value {
    let res = app
        .post(
            "/scripts",
            &json!({ "name": format!("Script {slug}"), "slug": slug }),
        )
        .await;
    json_of(res, 201).await
}

pub fn graph() -> Value {
    json!({ "nodes": [{ "id": "n1" }], "edges": [] })
}

pub async fn create_version(app: &TestApp, id: &str) -> Value {
    let res = app
        .post(
            &format!("/scripts/{id}/versions"),
            &json!({ "graphJson": graph() }),
        )
        .await;
    json_of(res, 201).await
}

async fn audit(app: &TestApp, id: &str) -> Vec<Value> {
    let body = json_of(
        app.get(&format!("/scripts/{id}/audit?limit=200")).await,
        200,
    )
    .await;
    body["items"].as_array().unwrap().clone()
}

#[actix_web::test]
async fn create_script_answers_201_with_location_and_audit() {
    let app = spawn_app().await;
    let res = app
        .post(
            "/scripts",
            &json!({ "name": "Onboarding", "slug": "onboarding", "description": "d",
                     "labels": ["a"], "intents": ["greet"], "languageCodes": ["en", "pt-BR"], "embeddingKey": "emb" }),
        )
        .await;
    let location = res.headers()["location"].to_str().unwrap().to_string();
    assert!(res.headers().contains_key("etag"));
    let s = json_of(res, 201).await;
    assert_eq!(location, format!("/scripts/{}", s["id"].as_str().unwrap()));
    assert_eq!(s["tenantId"], TENANT);
    assert_eq!(s["status"], "DRAFT");
    assert_eq!(s["latestVersion"], 0);
    assert_eq!(s["activeVersionId"], Value::Null);
    assert_eq!(s["createdById"], "alice");
    assert_eq!(s["updatedById"], "alice");
    assert_eq!(s["languageCodes"], json!(["en", "pt-BR"]));
    let created = s["createdAt"].as_str().unwrap();
    assert!(created.ends_with('Z') && created.len() == 24, "{created}");
    let id = s["id"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);

    let a = audit(&app, id).await;
    assert_eq!(a.len(), 1);
    assert_eq!(a[0]["action"], "CREATE");
    assert_eq!(a[0]["version"], 0);
    assert_eq!(a[0]["actorId"], "alice");
    assert_eq!(a[0]["diffJson"], Value::Null);
    assert_eq!(a[0]["scriptId"], id);
}

#[actix_web::test]
async fn create_script_lists_every_invalid_field() {
    let app = spawn_app().await;
    let res = app
        .post(
            "/scripts",
            &json!({ "name": "", "slug": "Not A Slug", "description": "x".repeat(2001),
                     "labels": vec!["l"; 51], "intents": [""], "languageCodes": ["english!"] }),
        )
        .await;
    let body = assert_error(res, 400, "VALIDATION_FAILED").await;
    assert_eq!(
        fields(&body),
        vec![
            "description",
            "intents",
            "labels",
            "languageCodes",
            "name",
            "slug"
        ]
    );
    // Wrong types and missing fields name the field too.
    let res = app
        .post("/scripts", &json!({ "name": 5, "slug": "a" }))
        .await;
    assert_eq!(
        fields(&assert_error(res, 400, "VALIDATION_FAILED").await),
        vec!["name"]
    );
    let res = app.post("/scripts", &json!({ "name": "n" })).await;
    assert_error(res, 400, "VALIDATION_FAILED").await;
    let res = app
        .post("/scripts", &json!({ "name": "n", "slug": "s", "bogus": 1 }))
        .await;
    assert_error(res, 400, "VALIDATION_FAILED").await;
}

#[actix_web::test]
async fn slug_is_unique_per_tenant() {
    let app = spawn_app().await;
    create_script(&app, "dup").await;
    let res = app
        .post("/scripts", &json!({ "name": "x", "slug": "dup" }))
        .await;
    assert_error(res, 409, "SLUG_TAKEN").await;
    let res = app
        .raw(Method::POST, "/scripts")
        .bearer_auth(TOKEN)
        .header("x-tenant-id", "other")
        .json(&json!({ "name": "x", "slug": "dup" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
}

#[actix_web::test]
async fn tenant_comes_from_header_or_body_and_must_agree() {
    let app = spawn_app().await;
    let body = json!({ "name": "x", "slug": "x" });
    let res = app
        .raw(Method::POST, "/scripts")
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_error(res, 400, "TENANT_REQUIRED").await;

    let res = app
        .req(Method::POST, "/scripts")
        .json(&json!({ "tenantId": "other", "name": "x", "slug": "x" }))
        .send()
        .await
        .unwrap();
    assert_error(res, 400, "TENANT_MISMATCH").await;

    let res = app
        .raw(Method::POST, "/scripts")
        .bearer_auth(TOKEN)
        .json(&json!({ "tenantId": "bodyonly", "name": "x", "slug": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(res, 201).await["tenantId"], "bodyonly");

    let res = app
        .raw(Method::GET, "/scripts?tenantId=bodyonly")
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        json_of(res, 200).await["items"].as_array().unwrap().len(),
        1
    );
    let res = app
        .req(Method::GET, "/scripts?tenantId=bodyonly")
        .send()
        .await
        .unwrap();
    assert_error(res, 400, "TENANT_MISMATCH").await;

    let res = app
        .raw(Method::GET, "/scripts")
        .bearer_auth(TOKEN)
        .header("x-tenant-id", "-bad tenant")
        .send()
        .await
        .unwrap();
    assert_eq!(
        fields(&assert_error(res, 400, "VALIDATION_FAILED").await),
        vec!["x-tenant-id"]
    );
}

#[actix_web::test]
async fn bearer_token_is_required() {
    let app = spawn_app().await;
    for auth in [None, Some("Basic abc"), Some("Bearer "), Some("Bearer")] {
        let mut req = app
            .raw(Method::GET, "/scripts")
            .header("x-tenant-id", TENANT);
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
        assert_error(res, 401, "UNAUTHORIZED").await;
    }
    // dev mode: the actor is the token's text before the first '.'
    let res = app
        .raw(Method::POST, "/scripts")
        .header("x-tenant-id", TENANT)
        .bearer_auth("bob.whatever")
        .json(&json!({ "name": "x", "slug": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(res, 201).await["createdById"], "bob");
}

#[actix_web::test]
async fn bodies_are_json_within_their_limit() {
    let app = spawn_app().await;
    let res = app
        .req(Method::POST, "/scripts")
        .header("content-type", "text/plain")
        .body("name=x")
        .send()
        .await
        .unwrap();
    assert_error(res, 415, "UNSUPPORTED_MEDIA_TYPE").await;
    let res = app
        .req(Method::POST, "/scripts")
        .body("{\"name\":")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_error(res, 400, "MALFORMED_JSON").await;
    let res = app
        .req(Method::POST, "/scripts")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_error(res, 400, "MALFORMED_JSON").await;

    // 64 KiB elsewhere
    let big = json!({ "name": "x", "slug": "x", "description": "d".repeat(70 * 1024) });
    assert_error(app.post("/scripts", &big).await, 413, "PAYLOAD_TOO_LARGE").await;

    // 5 MiB on versions: 1 MiB passes, more than 5 MiB does not, also when streamed
    let s = create_script(&app, "big").await;
    let id = s["id"].as_str().unwrap();
    let one_mib = json!({ "graphJson": { "nodes": [{ "id": "n", "blob": "b".repeat(1024 * 1024) }], "edges": [] } });
    assert_eq!(
        app.post(&format!("/scripts/{id}/versions"), &one_mib)
            .await
            .status(),
        201
    );
    let six_mib = json!({ "graphJson": { "nodes": [{ "id": "n", "blob": "b".repeat(6 * 1024 * 1024) }], "edges": [] } });
    assert_error(
        app.post(&format!("/scripts/{id}/versions"), &six_mib).await,
        413,
        "PAYLOAD_TOO_LARGE",
    )
    .await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..7).map(|_| Ok(vec![b' '; 1024 * 1024])).collect();
    let res = app
        .req(Method::POST, &format!("/scripts/{id}/versions"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_error(res, 413, "PAYLOAD_TOO_LARGE").await;
}

#[actix_web::test]
async fn path_ids_and_versions_are_validated() {
    let app = spawn_app().await;
    let res = app.get("/scripts/not-a-uuid").await;
    assert_eq!(
        fields(&assert_error(res, 400, "VALIDATION_FAILED").await),
        vec!["id"]
    );
    let s = create_script(&app, "p").await;
    let id = s["id"].as_str().unwrap();
    for bad in ["x", "1.5", "0", "-1"] {
        let res = app.get(&format!("/scripts/{id}/versions/{bad}")).await;
        assert_eq!(
            fields(&assert_error(res, 400, "VALIDATION_FAILED").await),
            vec!["version"]
        );
    }
    let res = app
        .post(&format!("/scripts/{id}/versions/abc/publish"), &json!({}))
        .await;
    assert_error(res, 400, "VALIDATION_FAILED").await;
    let unknown = uuid::Uuid::now_v7();
    assert_error(
        app.get(&format!("/scripts/{unknown}")).await,
        404,
        "NOT_FOUND",
    )
    .await;
    assert_error(
        app.get(&format!("/scripts/{id}/versions/9")).await,
        404,
        "NOT_FOUND",
    )
    .await;
}

#[actix_web::test]
async fn version_create_publish_and_get_show_the_active_version() {
    let app = spawn_app().await;
    let s = create_script(&app, "flow").await;
    let id = s["id"].as_str().unwrap();
    let res = app
        .post(
            &format!("/scripts/{id}/versions"),
            &json!({ "graphJson": { "nodes": [], "edges": [] }, "variablesDef": { "x": "string" },
                     "changelog": "first", "note": "n1", "baseVersion": 0 }),
        )
        .await;
    assert_eq!(
        res.headers()["location"],
        format!("/scripts/{id}/versions/1").as_str()
    );
    let v = json_of(res, 201).await;
    assert_eq!(v["version"], 1);
    assert_eq!(v["scriptId"], id);
    assert_eq!(v["isPublished"], false);
    assert_eq!(v["isActive"], false);
    assert_eq!(v["variablesDef"], json!({ "x": "string" }));

    let res = app
        .post(
            &format!("/scripts/{id}/versions/1/publish"),
            &json!({ "note": "go" }),
        )
        .await;
    let etag = res.headers()["etag"].to_str().unwrap().to_string();
    let p = json_of(res, 200).await;
    assert_eq!(p["status"], "PUBLISHED");
    assert_eq!(p["activeVersionId"], v["id"]);
    assert_eq!(p["activeVersion"]["isPublished"], true);
    assert_eq!(p["activeVersion"]["isActive"], true);

    let res = app.get(&format!("/scripts/{id}")).await;
    assert_eq!(res.headers()["etag"].to_str().unwrap(), etag);
    let g = json_of(res, 200).await;
    assert_eq!(g["activeVersionId"], v["id"]);
    assert_eq!(
        g["activeVersion"]["graphJson"],
        json!({ "nodes": [], "edges": [] })
    );
    assert_eq!(g["activeVersion"]["version"], 1);
    assert_eq!(g["latestVersion"], 1);

    let res = app
        .req(Method::GET, &format!("/scripts/{id}"))
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 304);

    let full = json_of(app.get(&format!("/scripts/{id}/versions/1")).await, 200).await;
    assert_eq!(full["graphJson"], json!({ "nodes": [], "edges": [] }));
    assert_eq!(full["isActive"], true);

    let a = audit(&app, id).await;
    let actions: Vec<&str> = a.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, vec!["PUBLISH", "CREATE", "CREATE"]);
    assert_eq!(a[0]["version"], 1);
    assert_eq!(a[0]["note"], "go");
    assert_eq!(
        a[0]["diffJson"]["activeVersionId"],
        json!({ "from": null, "to": v["id"] })
    );
    assert_eq!(
        a[0]["diffJson"]["status"],
        json!({ "from": "DRAFT", "to": "PUBLISHED" })
    );
    assert_eq!(a[1]["version"], 1);
    assert_eq!(a[1]["note"], "n1");
}

#[actix_web::test]
async fn graph_json_and_base_version_are_checked() {
    let app = spawn_app().await;
    let s = create_script(&app, "g").await;
    let id = s["id"].as_str().unwrap();
    for bad in [
        json!([]),
        json!({ "nodes": [] }),
        json!({ "nodes": {}, "edges": [] }),
        json!("x"),
    ] {
        let res = app
            .post(
                &format!("/scripts/{id}/versions"),
                &json!({ "graphJson": bad }),
            )
            .await;
        assert_eq!(
            fields(&assert_error(res, 400, "VALIDATION_FAILED").await),
            vec!["graphJson"]
        );
    }
    create_version(&app, id).await;
    let res = app
        .post(
            &format!("/scripts/{id}/versions"),
            &json!({ "graphJson": graph(), "baseVersion": 0 }),
        )
        .await;
    let body = assert_error(res, 409, "VERSION_CONFLICT").await;
    assert_eq!(body["details"]["latestVersion"], 1);
    let res = app
        .post(
            &format!("/scripts/{id}/versions"),
            &json!({ "graphJson": graph(), "baseVersion": 1 }),
        )
        .await;
    assert_eq!(json_of(res, 201).await["version"], 2);
}

#[actix_web::test]
async fn publish_rollback_and_no_op() {
    let app = spawn_app().await;
    let s = create_script(&app, "rb").await;
    let id = s["id"].as_str().unwrap();
    let v1 = create_version(&app, id).await;
    let v2 = create_version(&app, id).await;
    assert_eq!(
        json_of(
            app.post(&format!("/scripts/{id}/versions/2/publish"), &json!({}))
                .await,
            200
        )
        .await["activeVersionId"],
        v2["id"]
    );
    // Already active and PUBLISHED: 200, no audit row. An empty body is fine.
    let res = app
        .req(Method::POST, &format!("/scripts/{id}/versions/2/publish"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let rolled = json_of(
        app.post(&format!("/scripts/{id}/versions/1/publish"), &json!({}))
            .await,
        200,
    )
    .await;
    assert_eq!(rolled["activeVersionId"], v1["id"]);
    let a = audit(&app, id).await;
    let actions: Vec<&str> = a.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        vec!["ROLLBACK", "PUBLISH", "CREATE", "CREATE", "CREATE"]
    );
    assert_eq!(a[0]["version"], 1);
    assert_eq!(
        a[0]["diffJson"]["activeVersionId"],
        json!({ "from": v2["id"], "to": v1["id"] })
    );
    // isPublished stays true on v2 after the rollback; isActive moved.
    let v2_now = json_of(app.get(&format!("/scripts/{id}/versions/2")).await, 200).await;
    assert_eq!(
        (v2_now["isPublished"].clone(), v2_now["isActive"].clone()),
        (json!(true), json!(false))
    );
    // DRAFT with the same active version: publishing it again is a real PUBLISH.
    json_of(
        app.patch(&format!("/scripts/{id}"), &json!({ "status": "DRAFT" }))
            .await,
        200,
    )
    .await;
    let p = json_of(
        app.post(&format!("/scripts/{id}/versions/1/publish"), &json!({}))
            .await,
        200,
    )
    .await;
    assert_eq!(p["status"], "PUBLISHED");
    let a = audit(&app, id).await;
    assert_eq!(a[0]["action"], "PUBLISH");
    assert_eq!(
        a[0]["diffJson"]["status"],
        json!({ "from": "DRAFT", "to": "PUBLISHED" })
    );
    assert_error(
        app.post(&format!("/scripts/{id}/versions/9/publish"), &json!({}))
            .await,
        404,
        "NOT_FOUND",
    )
    .await;
}

#[actix_web::test]
async fn archived_scripts_refuse_versions_publish_and_edits() {
    let app = spawn_app().await;
    let s = create_script(&app, "arch").await;
    let id = s["id"].as_str().unwrap();
    create_version(&app, id).await;
    let a = json_of(
        app.patch(
            &format!("/scripts/{id}"),
            &json!({ "status": "ARCHIVED", "note": "bye" }),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(a["status"], "ARCHIVED");
    let res = app
        .post(
            &format!("/scripts/{id}/versions"),
            &json!({ "graphJson": graph() }),
        )
        .await;
    assert_error(res, 409, "SCRIPT_ARCHIVED").await;
    assert_error(
        app.post(&format!("/scripts/{id}/versions/1/publish"), &json!({}))
            .await,
        409,
        "SCRIPT_ARCHIVED",
    )
    .await;
    assert_error(
        app.patch(&format!("/scripts/{id}"), &json!({ "name": "new" }))
            .await,
        409,
        "SCRIPT_ARCHIVED",
    )
    .await;
    assert_error(
        app.patch(&format!("/scripts/{id}"), &json!({ "status": "PUBLISHED" }))
            .await,
        409,
        "INVALID_STATUS_TRANSITION",
    )
    .await;
    let d = json_of(
        app.patch(&format!("/scripts/{id}"), &json!({ "status": "DRAFT" }))
            .await,
        200,
    )
    .await;
    assert_eq!(d["status"], "DRAFT");
    let actions: Vec<String> = audit(&app, id)
        .await
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(actions, vec!["UPDATE", "ARCHIVE", "CREATE", "CREATE"]);
}

#[actix_web::test]
async fn patch_is_a_merge_patch_with_diff_of_changed_fields() {
    let app = spawn_app().await;
    let s = create_script(&app, "pt").await;
    let id = s["id"].as_str().unwrap();
    let path = format!("/scripts/{id}");
    let res = app
        .patch(&path, &json!({ "name": "Renamed", "slug": "pt", "labels": ["x"], "description": "d", "note": "why" }))
        .await;
    let etag = res.headers()["etag"].to_str().unwrap().to_string();
    let p = json_of(res, 200).await;
    assert_eq!(p["name"], "Renamed");
    let a = audit(&app, id).await;
    assert_eq!(a[0]["action"], "UPDATE");
    assert_eq!(a[0]["note"], "why");
    assert_eq!(a[0]["version"], 0);
    assert_eq!(
        a[0]["diffJson"],
        json!({ "name": { "from": "Script pt", "to": "Renamed" }, "labels": { "from": [], "to": ["x"] },
                "description": { "from": null, "to": "d" } })
    );
    // null clears an optional field; and is 400 on a required one
    let p = json_of(
        app.patch(&path, &json!({ "description": null, "labels": null }))
            .await,
        200,
    )
    .await;
    assert_eq!(p["description"], Value::Null);
    assert_eq!(p["labels"], json!([]));
    let body = assert_error(
        app.patch(&path, &json!({ "name": null })).await,
        400,
        "VALIDATION_FAILED",
    )
    .await;
    assert_eq!(fields(&body), vec!["name"]);
    assert_error(app.patch(&path, &json!({})).await, 400, "VALIDATION_FAILED").await;
    assert_error(
        app.patch(&path, &json!({ "note": "only" })).await,
        400,
        "VALIDATION_FAILED",
    )
    .await;
    assert_error(
        app.patch(&path, &json!({ "slug": "BAD" })).await,
        400,
        "VALIDATION_FAILED",
    )
    .await;
    // Nothing changes: 200, no audit row.
    let before = audit(&app, id).await.len();
    assert_eq!(
        json_of(app.patch(&path, &json!({ "name": "Renamed" })).await, 200).await["name"],
        "Renamed"
    );
    assert_eq!(audit(&app, id).await.len(), before);
    // If-Match
    let res = app
        .req(Method::PATCH, &path)
        .header("If-Match", &etag)
        .json(&json!({ "name": "n2" }))
        .send()
        .await
        .unwrap();
    assert_error(res, 412, "PRECONDITION_FAILED").await;
    let current = app.get(&path).await.headers()["etag"]
        .to_str()
        .unwrap()
        .to_string();
    let res = app
        .req(Method::PATCH, &path)
        .header("If-Match", &current)
        .json(&json!({ "name": "n2" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .req(Method::PATCH, &path)
        .header("If-Match", "*")
        .json(&json!({ "name": "n3" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // Transitions
    assert_error(
        app.patch(&path, &json!({ "status": "PUBLISHED" })).await,
        409,
        "NO_ACTIVE_VERSION",
    )
    .await;
    create_script(&app, "taken").await;
    assert_error(
        app.patch(&path, &json!({ "slug": "taken" })).await,
        409,
        "SLUG_TAKEN",
    )
    .await;
    create_version(&app, id).await;
    json_of(
        app.post(&format!("{path}/versions/1/publish"), &json!({}))
            .await,
        200,
    )
    .await;
    let d = json_of(app.patch(&path, &json!({ "status": "DRAFT" })).await, 200).await;
    assert_eq!(d["status"], "DRAFT");
    assert!(
        d["activeVersionId"].is_string(),
        "DRAFT keeps activeVersionId"
    );
    json_of(
        app.patch(&path, &json!({ "status": "PUBLISHED" })).await,
        200,
    )
    .await;
    let a = audit(&app, id).await;
    assert_eq!(a[0]["action"], "PUBLISH");
    assert_eq!(
        a[0]["diffJson"],
        json!({ "status": { "from": "DRAFT", "to": "PUBLISHED" } })
    );
    assert_eq!(a[0]["version"], 1);
}

#[actix_web::test]
async fn another_tenants_script_is_404_on_every_route() {
    let app = spawn_app().await;
    let s = create_script(&app, "mine").await;
    let id = s["id"].as_str().unwrap();
    create_version(&app, id).await;
    let other = |m: Method, p: String| {
        app.raw(m, &p)
            .bearer_auth(TOKEN)
            .header("x-tenant-id", "intruder")
    };
    let checks = vec![
        other(Method::GET, format!("/scripts/{id}")),
        other(Method::PATCH, format!("/scripts/{id}")).json(&json!({ "name": "x" })),
        other(Method::POST, format!("/scripts/{id}/versions"))
            .json(&json!({ "graphJson": graph() })),
        other(Method::POST, format!("/scripts/{id}/versions/1/publish")).json(&json!({})),
        other(Method::GET, format!("/scripts/{id}/versions")),
        other(Method::GET, format!("/scripts/{id}/versions/1")),
        other(Method::GET, format!("/scripts/{id}/audit")),
    ];
    for req in checks {
        assert_error(req.send().await.unwrap(), 404, "NOT_FOUND").await;
    }
    let list = json_of(
        other(Method::GET, "/scripts".into()).send().await.unwrap(),
        200,
    )
    .await;
    assert_eq!(list["items"], json!([]));
    // Nothing of the intruder's attempts was written.
    assert_eq!(audit(&app, id).await.len(), 2);
}

#[actix_web::test]
async fn lists_paginate_without_gap_or_duplicate() {
    let app = spawn_app().await;
    let mut created = Vec::new();
    for i in 0..11 {
        created.push(
            create_script(&app, &format!("s{i}")).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/scripts?limit=4&cursor={c}"),
            None => "/scripts?limit=4".to_string(),
        };
        let page = json_of(app.get(&path).await, 200).await;
        pages += 1;
        for item in page["items"].as_array().unwrap() {
            seen.push(item["id"].as_str().unwrap().to_string());
        }
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    created.reverse();
    assert_eq!(seen, created, "newest first, each once");
    // exactly one full page: nextCursor null
    let page = json_of(app.get("/scripts?limit=11").await, 200).await;
    assert_eq!(page["nextCursor"], Value::Null);

    let first = json_of(app.get("/scripts?limit=2").await, 200).await;
    let c = first["nextCursor"].as_str().unwrap();
    assert_error(
        app.get(&format!("/scripts?limit=2&cursor={c}&status=DRAFT"))
            .await,
        400,
        "VALIDATION_FAILED",
    )
    .await;
    assert_error(
        app.get("/scripts?cursor=garbage").await,
        400,
        "VALIDATION_FAILED",
    )
    .await;
    for bad in ["limit=0", "limit=201", "limit=x", "status=NOPE"] {
        assert_error(
            app.get(&format!("/scripts?{bad}")).await,
            400,
            "VALIDATION_FAILED",
        )
        .await;
    }

    // versions and audit lists page too
    let id = &created[0];
    for _ in 0..5 {
        create_version(&app, id).await;
    }
    let p1 = json_of(
        app.get(&format!("/scripts/{id}/versions?limit=2")).await,
        200,
    )
    .await;
    let nums: Vec<i64> = p1["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    assert_eq!(nums, vec![5, 4]);
    assert!(p1["items"][0].get("graphJson").is_none());
    let c = p1["nextCursor"].as_str().unwrap();
    let p2 = json_of(
        app.get(&format!("/scripts/{id}/versions?limit=3&cursor={c}"))
            .await,
        200,
    )
    .await;
    let nums: Vec<i64> = p2["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    assert_eq!(nums, vec![3, 2, 1]);
    assert_eq!(p2["nextCursor"], Value::Null);
    let a1 = json_of(app.get(&format!("/scripts/{id}/audit?limit=4")).await, 200).await;
    let c = a1["nextCursor"].as_str().unwrap();
    let a2 = json_of(
        app.get(&format!("/scripts/{id}/audit?limit=4&cursor={c}"))
            .await,
        200,
    )
    .await;
    let versions: Vec<i64> = a1["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(a2["items"].as_array().unwrap())
        .map(|e| e["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, vec![5, 4, 3, 2, 1, 0]);
}

#[actix_web::test]
async fn search_treats_wildcards_literally_and_slug_is_exact() {
    let app = spawn_app().await;
    for (name, slug) in [
        ("100% done", "a"),
        ("under_score", "b"),
        ("plain", "c"),
        ("1000 done", "d"),
        ("underXscore", "e"),
        ("back\\slash", "f"),
    ] {
        json_of(
            app.post("/scripts", &json!({ "name": name, "slug": slug }))
                .await,
            201,
        )
        .await;
    }
    let names = |v: Value| -> Vec<String> {
        let mut n: Vec<String> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect();
        n.sort();
        n
    };
    assert_eq!(
        names(json_of(app.get("/scripts?q=0%25").await, 200).await),
        vec!["100% done"]
    );
    assert_eq!(
        names(json_of(app.get("/scripts?q=r_s").await, 200).await),
        vec!["under_score"]
    );
    assert_eq!(
        names(json_of(app.get("/scripts?q=K%5Cs").await, 200).await),
        vec!["back\\slash"]
    );
    assert_eq!(
        names(json_of(app.get("/scripts?q=%20PLAIN%20").await, 200).await),
        vec!["plain"]
    );
    assert_eq!(
        names(json_of(app.get("/scripts?slug=c").await, 200).await),
        vec!["plain"]
    );
    assert_eq!(
        json_of(app.get("/scripts?q=").await, 200).await["items"]
            .as_array()
            .unwrap()
            .len(),
        6
    );
    assert_eq!(
        json_of(app.get("/scripts?status=PUBLISHED").await, 200).await["items"],
        json!([])
    );
    assert_error(
        app.get(&format!("/scripts?q={}", "x".repeat(101))).await,
        400,
        "VALIDATION_FAILED",
    )
    .await;
}

async fn concurrent_versions(apps: &[&TestApp], id: &str, n: usize) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let app = apps[i % apps.len()];
        let req = app
            .req(Method::POST, &format!("/scripts/{id}/versions"))
            .json(&json!({ "graphJson": graph(), "changelog": format!("c{i}") }));
        tasks.push(async move { req.send().await.unwrap() });
    }
    let results = futures::future::join_all(tasks).await;
    for res in results {
        assert_eq!(res.status(), 201);
    }
}

async fn assert_versions_1_to(app: &TestApp, id: &str, n: i64) {
    let db = app.db().await;
    let sid = uuid::Uuid::parse_str(id).unwrap();
    let rows = db
        .query(
            "SELECT version FROM script_versions WHERE script_id = $1 ORDER BY version",
            &[&sid],
        )
        .await
        .unwrap();
    let got: Vec<i64> = rows.iter().map(|r| r.get::<_, i32>(0) as i64).collect();
    assert_eq!(got, (1..=n).collect::<Vec<_>>());
    let audits: i64 = db
        .query_one("SELECT count(*) FROM script_audit_logs WHERE script_id = $1 AND action = 'CREATE' AND version > 0", &[&sid])
        .await
        .unwrap()
        .get(0);
    assert_eq!(audits, n);
    let latest: i32 = db
        .query_one("SELECT latest_version FROM scripts WHERE id = $1", &[&sid])
        .await
        .unwrap()
        .get(0);
    assert_eq!(latest as i64, n);
}

#[actix_web::test]
async fn fifty_concurrent_version_creates_give_versions_1_to_50() {
    let app = spawn_app().await;
    let s = create_script(&app, "hot").await;
    let id = s["id"].as_str().unwrap();
    concurrent_versions(&[&app], id, 50).await;
    assert_versions_1_to(&app, id, 50).await;
}

#[actix_web::test]
async fn two_processes_on_one_database_never_duplicate_a_version() {
    let a = spawn_app().await;
    let b = spawn_app_on(&a.db_url, |_| {}).await;
    let s = create_script(&a, "shared").await;
    let id = s["id"].as_str().unwrap();
    concurrent_versions(&[&a, &b], id, 50).await;
    assert_versions_1_to(&a, id, 50).await;
}

#[actix_web::test]
async fn an_idle_actor_passivates_and_comes_back_with_its_state() {
    let app = spawn_app_with(|s| s.actors.idle_secs = 1).await;
    let s = create_script(&app, "idle").await;
    let id = s["id"].as_str().unwrap();
    create_version(&app, id).await;
    let sid = uuid::Uuid::parse_str(id).unwrap();
    let registry = app.state.scripts.registry().clone();
    assert!(registry.is_live(sid));
    eventually(Duration::from_secs(10), || async {
        (!registry.is_live(sid)).then_some(())
    })
    .await;
    assert!(registry.counts().passivated >= 1);
    // Re-activated on demand, from the database: the next number follows on.
    let v = create_version(&app, id).await;
    assert_eq!(v["version"], 2);
    assert!(registry.is_live(sid));
    let res = app
        .post(
            &format!("/scripts/{id}/versions"),
            &json!({ "graphJson": graph(), "baseVersion": 1 }),
        )
        .await;
    assert_error(res, 409, "VERSION_CONFLICT").await;
}

#[actix_web::test]
async fn a_failed_actor_is_restarted_and_the_next_request_succeeds() {
    let app = spawn_app().await;
    let s = create_script(&app, "crash").await;
    let id = s["id"].as_str().unwrap();
    let sid = uuid::Uuid::parse_str(id).unwrap();
    create_version(&app, id).await;
    let registry = app.state.scripts.registry().clone();

    // Stopped with an error: its supervisor restarts it and it reloads.
    app.state.scripts.inject_failure(sid, false).await.unwrap();
    let v = create_version(&app, id).await;
    assert_eq!(v["version"], 2);
    assert_eq!(registry.counts().restarted, 1);

    // A panic: the mailbox closes; the registry starts a fresh actor.
    app.state.scripts.inject_failure(sid, true).await.unwrap();
    let v = create_version(&app, id).await;
    assert_eq!(v["version"], 3);
    assert_eq!(registry.counts().restarted, 2);
    assert_eq!(
        registry
            .actors()
            .iter()
            .find(|a| a.key == id)
            .unwrap()
            .restarts,
        2
    );
}

#[actix_web::test]
async fn actors_for_ids_that_name_nothing_do_not_linger() {
    let app = spawn_app().await; // actors.idle_secs is the default 300 s
    let ghost = uuid::Uuid::now_v7();
    let res = app
        .post(
            &format!("/scripts/{ghost}/versions"),
            &json!({ "graphJson": graph() }),
        )
        .await;
    assert_error(res, 404, "NOT_FOUND").await;
    let registry = app.state.scripts.registry().clone();
    eventually(Duration::from_secs(10), || async {
        (!registry.is_live(ghost)).then_some(())
    })
    .await;
    let runs = app.state.runs.registry().clone();
    let res = app
        .post(
            &format!("/runs/{ghost}/vars"),
            &json!([{ "key": "a", "strVal": "x" }]),
        )
        .await;
    assert_error(res, 404, "NOT_FOUND").await;
    eventually(Duration::from_secs(10), || async {
        (!runs.is_live(ghost)).then_some(())
    })
    .await;
}
