//! Scripts, versions, publish/rollback, audit, and the ScriptActor life cycle.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

async fn audit(app: &TestApp, id: &str) -> Vec<Value> {
    let body = app
        .get_json(&format!("/scripts/{id}/audit?limit=200"), 200)
        .await;
    items(&body).clone()
}

/// The actions of audit entries, in order.
fn actions(entries: &[Value]) -> Vec<String> {
    entries.iter().map(|e| str_of(&e["action"])).collect()
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
    let all_bad = json!({ "name": "", "slug": "Not A Slug", "description": "x".repeat(2001),
                          "labels": vec!["l"; 51], "intents": [""], "languageCodes": ["english!"] });
    let body = app.post_invalid("/scripts", &all_bad).await;
    let expected = [
        "description",
        "intents",
        "labels",
        "languageCodes",
        "name",
        "slug",
    ];
    assert_eq!(fields(&body), expected);
    // Wrong types and missing fields name the field too.
    let body = app
        .post_invalid("/scripts", &json!({ "name": 5, "slug": "a" }))
        .await;
    assert_eq!(fields(&body), vec!["name"]);
    app.post_invalid("/scripts", &json!({ "name": "n" })).await;
    let extra = json!({ "name": "n", "slug": "s", "bogus": 1 });
    app.post_invalid("/scripts", &extra).await;
}

#[actix_web::test]
async fn slug_is_unique_per_tenant() {
    let app = spawn_app().await;
    create_script(&app, "dup").await;
    let body = json!({ "name": "x", "slug": "dup" });
    app.post_err("/scripts", &body, 409, "SLUG_TAKEN").await;
    let res = send(app.as_tenant(Method::POST, "/scripts", "other").json(&body)).await;
    assert_eq!(res.status(), 201);
}

#[actix_web::test]
async fn tenant_comes_from_header_or_body_and_must_agree() {
    let app = spawn_app().await;
    let no_tenant = |m: Method, path: &str| app.raw(m, path).bearer_auth(TOKEN);
    let body = json!({ "name": "x", "slug": "x" });
    let req = no_tenant(Method::POST, "/scripts").json(&body);
    send_err(req, 400, "TENANT_REQUIRED").await;

    let body = json!({ "tenantId": "other", "name": "x", "slug": "x" });
    let req = app.req(Method::POST, "/scripts").json(&body);
    send_err(req, 400, "TENANT_MISMATCH").await;

    let body = json!({ "tenantId": "bodyonly", "name": "x", "slug": "x" });
    let created = send_json(no_tenant(Method::POST, "/scripts").json(&body), 201).await;
    assert_eq!(created["tenantId"], "bodyonly");

    let list = send_json(no_tenant(Method::GET, "/scripts?tenantId=bodyonly"), 200).await;
    assert_eq!(items(&list).len(), 1);
    let req = app.req(Method::GET, "/scripts?tenantId=bodyonly");
    send_err(req, 400, "TENANT_MISMATCH").await;

    let req = app.as_tenant(Method::GET, "/scripts", "-bad tenant");
    let body = send_err(req, 400, "VALIDATION_FAILED").await;
    assert_eq!(fields(&body), vec!["x-tenant-id"]);
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
        let res = send(req).await;
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
        assert_error(res, 401, "UNAUTHORIZED").await;
    }
    // dev mode: the actor is the token's text before the first '.'
    let req = app
        .with_token(Method::POST, "/scripts", "bob.whatever", TENANT)
        .json(&json!({ "name": "x", "slug": "x" }));
    assert_eq!(send_json(req, 201).await["createdById"], "bob");
}

#[actix_web::test]
async fn bodies_are_json_within_their_limit() {
    let app = spawn_app().await;
    let typed = |path: &str, content_type: &str| {
        app.req(Method::POST, path)
            .header("content-type", content_type)
    };
    let req = typed("/scripts", "text/plain").body("name=x");
    send_err(req, 415, "UNSUPPORTED_MEDIA_TYPE").await;
    let req = typed("/scripts", "application/json").body("{\"name\":");
    send_err(req, 400, "MALFORMED_JSON").await;
    send_err(typed("/scripts", "application/json"), 400, "MALFORMED_JSON").await;

    // 64 KiB elsewhere
    let big = json!({ "name": "x", "slug": "x", "description": "d".repeat(70 * 1024) });
    app.post_err("/scripts", &big, 413, "PAYLOAD_TOO_LARGE")
        .await;

    // 5 MiB on versions: 1 MiB passes, more than 5 MiB does not, also when streamed
    let id = script_id(&app, "big").await;
    let versions = format!("/scripts/{id}/versions");
    let one_mib = json!({ "graphJson": { "nodes": [{ "id": "n", "blob": "b".repeat(1024 * 1024) }], "edges": [] } });
    assert_eq!(app.post(&versions, &one_mib).await.status(), 201);
    let six_mib = json!({ "graphJson": { "nodes": [{ "id": "n", "blob": "b".repeat(6 * 1024 * 1024) }], "edges": [] } });
    app.post_err(&versions, &six_mib, 413, "PAYLOAD_TOO_LARGE")
        .await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..7).map(|_| Ok(vec![b' '; 1024 * 1024])).collect();
    let stream = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let req = typed(&versions, "application/json").body(stream);
    send_err(req, 413, "PAYLOAD_TOO_LARGE").await;
}

#[actix_web::test]
async fn path_ids_and_versions_are_validated() {
    let app = spawn_app().await;
    let body = app.get_invalid("/scripts/not-a-uuid").await;
    assert_eq!(fields(&body), vec!["id"]);
    let id = script_id(&app, "p").await;
    for bad in ["x", "1.5", "0", "-1"] {
        let body = app
            .get_invalid(&format!("/scripts/{id}/versions/{bad}"))
            .await;
        assert_eq!(fields(&body), vec!["version"]);
    }
    let publish = format!("/scripts/{id}/versions/abc/publish");
    app.post_invalid(&publish, &json!({})).await;
    let unknown = uuid::Uuid::now_v7();
    for missing in [
        format!("/scripts/{unknown}"),
        format!("/scripts/{id}/versions/9"),
    ] {
        app.get_err(&missing, 404, "NOT_FOUND").await;
    }
}

#[actix_web::test]
async fn version_create_publish_and_get_show_the_active_version() {
    let app = spawn_app().await;
    let id = script_id(&app, "flow").await;
    let id = id.as_str();
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

    let publish = format!("/scripts/{id}/versions/1/publish");
    let res = app.post(&publish, &json!({ "note": "go" })).await;
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
    let empty = json!({ "nodes": [], "edges": [] });
    assert_eq!(g["activeVersion"]["graphJson"], empty);
    assert_eq!(g["activeVersion"]["version"], 1);
    assert_eq!(g["latestVersion"], 1);

    let req = app
        .req(Method::GET, &format!("/scripts/{id}"))
        .header("If-None-Match", &etag);
    assert_eq!(send(req).await.status(), 304);

    let full = app
        .get_json(&format!("/scripts/{id}/versions/1"), 200)
        .await;
    assert_eq!(full["graphJson"], empty);
    assert_eq!(full["isActive"], true);

    let a = audit(&app, id).await;
    assert_eq!(actions(&a), ["PUBLISH", "CREATE", "CREATE"]);
    assert_eq!(a[0]["version"], 1);
    assert_eq!(a[0]["note"], "go");
    let diff = &a[0]["diffJson"];
    assert_eq!(
        diff["activeVersionId"],
        json!({ "from": null, "to": v["id"] })
    );
    assert_eq!(
        diff["status"],
        json!({ "from": "DRAFT", "to": "PUBLISHED" })
    );
    assert_eq!(a[1]["version"], 1);
    assert_eq!(a[1]["note"], "n1");
}

#[actix_web::test]
async fn graph_json_and_base_version_are_checked() {
    let app = spawn_app().await;
    let id = script_id(&app, "g").await;
    let versions = format!("/scripts/{id}/versions");
    for bad in [
        json!([]),
        json!({ "nodes": [] }),
        json!({ "nodes": {}, "edges": [] }),
        json!("x"),
    ] {
        let body = app
            .post_invalid(&versions, &json!({ "graphJson": bad }))
            .await;
        assert_eq!(fields(&body), vec!["graphJson"]);
    }
    create_version(&app, &id).await;
    let stale = json!({ "graphJson": graph(), "baseVersion": 0 });
    let body = app
        .post_err(&versions, &stale, 409, "VERSION_CONFLICT")
        .await;
    assert_eq!(body["details"]["latestVersion"], 1);
    let current = json!({ "graphJson": graph(), "baseVersion": 1 });
    assert_eq!(app.post_json(&versions, &current, 201).await["version"], 2);
}

#[actix_web::test]
async fn publish_rollback_and_no_op() {
    let app = spawn_app().await;
    let id = script_id(&app, "rb").await;
    let id = id.as_str();
    let v1 = create_version(&app, id).await;
    let v2 = create_version(&app, id).await;
    assert_eq!(
        publish_version(&app, id, 2).await["activeVersionId"],
        v2["id"]
    );
    // Already active and PUBLISHED: 200, no audit row. An empty body is fine.
    let req = app.req(Method::POST, &format!("/scripts/{id}/versions/2/publish"));
    assert_eq!(send(req).await.status(), 200);
    let rolled = publish_version(&app, id, 1).await;
    assert_eq!(rolled["activeVersionId"], v1["id"]);
    let a = audit(&app, id).await;
    assert_eq!(
        actions(&a),
        ["ROLLBACK", "PUBLISH", "CREATE", "CREATE", "CREATE"]
    );
    assert_eq!(a[0]["version"], 1);
    let moved = json!({ "from": v2["id"], "to": v1["id"] });
    assert_eq!(a[0]["diffJson"]["activeVersionId"], moved);
    // isPublished stays true on v2 after the rollback; isActive moved.
    let v2_now = app
        .get_json(&format!("/scripts/{id}/versions/2"), 200)
        .await;
    assert_eq!(
        (v2_now["isPublished"].clone(), v2_now["isActive"].clone()),
        (json!(true), json!(false))
    );
    // DRAFT with the same active version: publishing it again is a real PUBLISH.
    let script = format!("/scripts/{id}");
    app.patch_json(&script, &json!({ "status": "DRAFT" }), 200)
        .await;
    let p = publish_version(&app, id, 1).await;
    assert_eq!(p["status"], "PUBLISHED");
    let a = audit(&app, id).await;
    assert_eq!(a[0]["action"], "PUBLISH");
    let published = json!({ "from": "DRAFT", "to": "PUBLISHED" });
    assert_eq!(a[0]["diffJson"]["status"], published);
    let missing = format!("/scripts/{id}/versions/9/publish");
    app.post_err(&missing, &json!({}), 404, "NOT_FOUND").await;
}

#[actix_web::test]
async fn archived_scripts_refuse_versions_publish_and_edits() {
    let app = spawn_app().await;
    let id = script_id(&app, "arch").await;
    create_version(&app, &id).await;
    let path = format!("/scripts/{id}");
    let archive = json!({ "status": "ARCHIVED", "note": "bye" });
    let a = app.patch_json(&path, &archive, 200).await;
    assert_eq!(a["status"], "ARCHIVED");
    let version = json!({ "graphJson": graph() });
    let versions = format!("{path}/versions");
    app.post_err(&versions, &version, 409, "SCRIPT_ARCHIVED")
        .await;
    let publish = format!("{path}/versions/1/publish");
    app.post_err(&publish, &json!({}), 409, "SCRIPT_ARCHIVED")
        .await;
    let rename = json!({ "name": "new" });
    app.patch_err(&path, &rename, 409, "SCRIPT_ARCHIVED").await;
    let to_published = json!({ "status": "PUBLISHED" });
    app.patch_err(&path, &to_published, 409, "INVALID_STATUS_TRANSITION")
        .await;
    let d = app
        .patch_json(&path, &json!({ "status": "DRAFT" }), 200)
        .await;
    assert_eq!(d["status"], "DRAFT");
    assert_eq!(
        actions(&audit(&app, &id).await),
        vec!["UPDATE", "ARCHIVE", "CREATE", "CREATE"]
    );
}

#[actix_web::test]
async fn patch_is_a_merge_patch_with_diff_of_changed_fields() {
    let app = spawn_app().await;
    let id = script_id(&app, "pt").await;
    let id = id.as_str();
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
    let clear = json!({ "description": null, "labels": null });
    let p = app.patch_json(&path, &clear, 200).await;
    assert_eq!(p["description"], Value::Null);
    assert_eq!(p["labels"], json!([]));
    let invalid = "VALIDATION_FAILED";
    let body = app
        .patch_err(&path, &json!({ "name": null }), 400, invalid)
        .await;
    assert_eq!(fields(&body), vec!["name"]);
    app.patch_err(&path, &json!({}), 400, invalid).await;
    app.patch_err(&path, &json!({ "note": "only" }), 400, invalid)
        .await;
    app.patch_err(&path, &json!({ "slug": "BAD" }), 400, invalid)
        .await;
    // Nothing changes: 200, no audit row.
    let before = audit(&app, id).await.len();
    let same = json!({ "name": "Renamed" });
    assert_eq!(app.patch_json(&path, &same, 200).await["name"], "Renamed");
    assert_eq!(audit(&app, id).await.len(), before);
    // If-Match
    let if_match = |tag: &str, name: &str| {
        app.req(Method::PATCH, &path)
            .header("If-Match", tag)
            .json(&json!({ "name": name }))
    };
    send_err(if_match(&etag, "n2"), 412, "PRECONDITION_FAILED").await;
    let current = app.get(&path).await.headers()["etag"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(send(if_match(&current, "n2")).await.status(), 200);
    assert_eq!(send(if_match("*", "n3")).await.status(), 200);
    // Transitions
    let to_published = json!({ "status": "PUBLISHED" });
    app.patch_err(&path, &to_published, 409, "NO_ACTIVE_VERSION")
        .await;
    create_script(&app, "taken").await;
    app.patch_err(&path, &json!({ "slug": "taken" }), 409, "SLUG_TAKEN")
        .await;
    create_version(&app, id).await;
    publish_version(&app, id, 1).await;
    let d = app
        .patch_json(&path, &json!({ "status": "DRAFT" }), 200)
        .await;
    assert_eq!(d["status"], "DRAFT");
    assert!(
        d["activeVersionId"].is_string(),
        "DRAFT keeps activeVersionId"
    );
    app.patch_json(&path, &to_published, 200).await;
    let a = audit(&app, id).await;
    assert_eq!(a[0]["action"], "PUBLISH");
    let published = json!({ "status": { "from": "DRAFT", "to": "PUBLISHED" } });
    assert_eq!(a[0]["diffJson"], published);
    assert_eq!(a[0]["version"], 1);
}

#[actix_web::test]
async fn another_tenants_script_is_404_on_every_route() {
    let app = spawn_app().await;
    let id = script_id(&app, "mine").await;
    create_version(&app, &id).await;
    let other = |m: Method, p: String| app.as_tenant(m, &p, "intruder");
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
    assert_invisible(&app, "intruder", checks, "/scripts").await;
    // Nothing of the intruder's attempts was written.
    assert_eq!(audit(&app, &id).await.len(), 2);
}

#[actix_web::test]
async fn lists_paginate_without_gap_or_duplicate() {
    let app = spawn_app().await;
    let mut created = Vec::new();
    for i in 0..11 {
        created.push(script_id(&app, &format!("s{i}")).await);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/scripts?limit=4&cursor={c}"),
            None => "/scripts?limit=4".to_string(),
        };
        let page = app.get_json(&path, 200).await;
        pages += 1;
        seen.extend(strings(&page["items"], "id"));
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    created.reverse();
    assert_eq!(seen, created, "newest first, each once");
    // exactly one full page: nextCursor null
    let page = app.get_json("/scripts?limit=11", 200).await;
    assert_eq!(page["nextCursor"], Value::Null);

    let first = app.get_json("/scripts?limit=2", 200).await;
    let c = first["nextCursor"].as_str().unwrap();
    app.get_invalid(&format!("/scripts?limit=2&cursor={c}&status=DRAFT"))
        .await;
    app.get_invalid("/scripts?cursor=garbage").await;
    for bad in ["limit=0", "limit=201", "limit=x", "status=NOPE"] {
        app.get_invalid(&format!("/scripts?{bad}")).await;
    }

    // versions and audit lists page too
    let id = &created[0];
    for _ in 0..5 {
        create_version(&app, id).await;
    }
    let versions = format!("/scripts/{id}/versions");
    let p1 = app.get_json(&format!("{versions}?limit=2"), 200).await;
    assert_eq!(numbers(&p1["items"], "version"), vec![5, 4]);
    assert!(p1["items"][0].get("graphJson").is_none());
    let c = p1["nextCursor"].as_str().unwrap();
    let p2 = app
        .get_json(&format!("{versions}?limit=3&cursor={c}"), 200)
        .await;
    assert_eq!(numbers(&p2["items"], "version"), vec![3, 2, 1]);
    assert_eq!(p2["nextCursor"], Value::Null);
    let audit = format!("/scripts/{id}/audit");
    let a1 = app.get_json(&format!("{audit}?limit=4"), 200).await;
    let c = a1["nextCursor"].as_str().unwrap();
    let a2 = app
        .get_json(&format!("{audit}?limit=4&cursor={c}"), 200)
        .await;
    let mut versions = numbers(&a1["items"], "version");
    versions.extend(numbers(&a2["items"], "version"));
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
        let body = json!({ "name": name, "slug": slug });
        app.post_json("/scripts", &body, 201).await;
    }
    for (query, expected) in [
        ("q=0%25", "100% done"),
        ("q=r_s", "under_score"),
        ("q=K%5Cs", "back\\slash"),
        ("q=%20PLAIN%20", "plain"),
        ("slug=c", "plain"),
    ] {
        let page = app.get_json(&format!("/scripts?{query}"), 200).await;
        let mut names = strings(&page["items"], "name");
        names.sort();
        assert_eq!(names, vec![expected], "{query}");
    }
    assert_eq!(items(&app.get_json("/scripts?q=", 200).await).len(), 6);
    let published = app.get_json("/scripts?status=PUBLISHED", 200).await;
    assert_eq!(published["items"], json!([]));
    app.get_invalid(&format!("/scripts?q={}", "x".repeat(101)))
        .await;
}

async fn concurrent_versions(apps: &[&TestApp], id: &str, n: usize) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let app = apps[i % apps.len()];
        let req = app
            .req(Method::POST, &format!("/scripts/{id}/versions"))
            .json(&json!({ "graphJson": graph(), "changelog": format!("c{i}") }));
        tasks.push(send(req));
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
    let id = script_id(&app, "hot").await;
    concurrent_versions(&[&app], &id, 50).await;
    assert_versions_1_to(&app, &id, 50).await;
}

#[actix_web::test]
async fn two_processes_on_one_database_never_duplicate_a_version() {
    let a = spawn_app().await;
    let b = spawn_app_on(&a.db_url, |_| {}).await;
    let id = script_id(&a, "shared").await;
    concurrent_versions(&[&a, &b], &id, 50).await;
    assert_versions_1_to(&a, &id, 50).await;
}

/// Waits until `live` (whether an actor lives) says no.
async fn passivated(live: impl Fn() -> bool) {
    eventually(Duration::from_secs(10), || {
        let gone = !live();
        async move { gone.then_some(()) }
    })
    .await;
}

#[actix_web::test]
async fn an_idle_actor_passivates_and_comes_back_with_its_state() {
    let app = spawn_app_with(|s| s.actors.idle_secs = 1).await;
    let id = script_id(&app, "idle").await;
    create_version(&app, &id).await;
    let sid = uuid::Uuid::parse_str(&id).unwrap();
    let registry = app.state.services.scripts.actors().registry().clone();
    assert!(registry.is_live(sid));
    passivated(|| registry.is_live(sid)).await;
    assert!(registry.counts().passivated >= 1);
    // Re-activated on demand, from the database: the next number follows on.
    let v = create_version(&app, &id).await;
    assert_eq!(v["version"], 2);
    assert!(registry.is_live(sid));
    let stale = json!({ "graphJson": graph(), "baseVersion": 1 });
    app.post_err(
        &format!("/scripts/{id}/versions"),
        &stale,
        409,
        "VERSION_CONFLICT",
    )
    .await;
}

#[actix_web::test]
async fn a_failed_actor_is_restarted_and_the_next_request_succeeds() {
    let app = spawn_app().await;
    let id = script_id(&app, "crash").await;
    let id = id.as_str();
    let sid = uuid::Uuid::parse_str(id).unwrap();
    create_version(&app, id).await;
    let registry = app.state.services.scripts.actors().registry().clone();

    // Stopped with an error: its supervisor restarts it and it reloads.
    inject_failure(app.state.services.scripts.actors(), sid, false).await;
    let v = create_version(&app, id).await;
    assert_eq!(v["version"], 2);
    assert_eq!(registry.counts().restarted, 1);

    // A panic: the mailbox closes; the registry starts a fresh actor.
    inject_failure(app.state.services.scripts.actors(), sid, true).await;
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
    let version = json!({ "graphJson": graph() });
    app.post_err(
        &format!("/scripts/{ghost}/versions"),
        &version,
        404,
        "NOT_FOUND",
    )
    .await;
    let registry = app.state.services.scripts.actors().registry().clone();
    passivated(|| registry.is_live(ghost)).await;
    let vars = json!([{ "key": "a", "strVal": "x" }]);
    app.post_err(&format!("/runs/{ghost}/vars"), &vars, 404, "NOT_FOUND")
        .await;
    let runs = app.state.services.runs.actors().registry().clone();
    passivated(|| runs.is_live(ghost)).await;
}

/// Makes the actor that owns `key` fail (a test hook of the core).
async fn inject_failure<A: actors::keyed::KeyedActor>(
    actors: &actors::keyed::Actors<A>,
    key: uuid::Uuid,
    panic: bool,
) {
    actors.inject_failure(key, panic).await.unwrap();
}
