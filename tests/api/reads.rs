//! Reads served from the script actors' memory: read-your-writes, another
//! process's writes seen once their NOTIFY arrives, a lost listener, the byte
//! bound, 304s and tenants.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(10);

async fn cache_stat(app: &TestApp, what: &str) -> i64 {
    metric_value(app, &format!("scriptd_read_cache{{what=\"{what}\"}}")).await
}

/// Reads the script and says whether memory answered it.
async fn read_counted(app: &TestApp, id: &str) -> (Value, bool) {
    let hits = cache_stat(app, "hits").await;
    let body = app.get_json(&format!("/scripts/{id}"), 200).await;
    (body, cache_stat(app, "hits").await > hits)
}

async fn rename(app: &TestApp, id: &str, name: &str) -> Value {
    let req = app
        .req(Method::PATCH, &format!("/scripts/{id}"))
        .header("If-Match", "*")
        .json(&json!({ "name": name }));
    send_json(req, 200).await
}

/// The cache serves once the listener is in place (right after start).
async fn wait_serving(app: &TestApp, id: &str) {
    eventually(WAIT, || async {
        read_counted(app, id).await.1.then_some(())
    })
    .await;
}

#[actix_web::test]
async fn reads_come_from_memory_and_see_this_process_writes_at_once() {
    let app = spawn_app().await;
    let id = published_script(&app, "rc-1").await;
    wait_serving(&app, &id).await;
    let (body, hit) = read_counted(&app, &id).await;
    assert!(hit);
    assert_eq!(body["activeVersion"]["version"], 1);
    for round in 0..3 {
        let name = format!("renamed {round}");
        let patched = rename(&app, &id, &name).await;
        let (body, hit) = read_counted(&app, &id).await;
        assert!(hit, "the write put its view in memory");
        assert_eq!(body, patched, "read-your-writes, whole body");
    }
    // A version create: the next read loads the new revision.
    create_version(&app, &id).await;
    let body = app.get_json(&format!("/scripts/{id}"), 200).await;
    assert_eq!(body["latestVersion"], 3);
    publish_version(&app, &id, 3).await;
    let (body, hit) = read_counted(&app, &id).await;
    assert!(hit);
    assert_eq!(body["activeVersion"]["version"], 3);
    // Versions: read, then from memory; the publish moved isActive.
    let path = format!("/scripts/{id}/versions/1");
    let v1 = app.get_json(&path, 200).await;
    let hits = cache_stat(&app, "hits").await;
    assert_eq!(app.get_json(&path, 200).await, v1);
    assert!(
        cache_stat(&app, "hits").await >= hits + 2,
        "script and version from memory"
    );
    assert_eq!(
        (v1["isActive"].clone(), v1["isPublished"].clone()),
        (json!(false), json!(true))
    );
    let v3 = app
        .get_json(&format!("/scripts/{id}/versions/3"), 200)
        .await;
    assert_eq!(v3["isActive"], true);
    app.get_err(&format!("/scripts/{id}/versions/9"), 404, "NOT_FOUND")
        .await;
}

#[actix_web::test]
async fn a_304_comes_from_memory_and_another_tenant_gets_404() {
    let app = spawn_app().await;
    let id = published_script(&app, "rc-2").await;
    wait_serving(&app, &id).await;
    let res = app.get(&format!("/scripts/{id}")).await;
    let etag = res.headers()["etag"].to_str().unwrap().to_string();
    let hits = cache_stat(&app, "hits").await;
    let req = app
        .req(Method::GET, &format!("/scripts/{id}"))
        .header("If-None-Match", &etag);
    let res = send(req).await;
    assert_eq!(res.status().as_u16(), 304);
    assert_eq!(res.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(cache_stat(&app, "hits").await, hits + 1);
    // Cached for t1: t2 learns nothing.
    for path in [
        format!("/scripts/{id}"),
        format!("/scripts/{id}/versions/1"),
    ] {
        let res = send(app.as_tenant(Method::GET, &path, "t2")).await;
        assert_error(res, 404, "NOT_FOUND").await;
    }
    // And a t2 miss does not spoil t1's view.
    let (body, hit) = read_counted(&app, &id).await;
    assert!(hit);
    assert_eq!(body["tenantId"], TENANT);
}

#[actix_web::test]
async fn another_process_write_is_seen_once_its_notify_arrives() {
    let db_url = fresh_database().await;
    let a = spawn_app_on(&db_url, |_| {}).await;
    let b = spawn_app_on(&db_url, |_| {}).await;
    let id = published_script(&a, "rc-3").await;
    wait_serving(&a, &id).await;
    let before = invalidations_of(&a).await;
    let patched = rename(&b, &id, "from b").await;
    let seen = eventually(WAIT, || async {
        let body = a.get_json(&format!("/scripts/{id}"), 200).await;
        (body["name"] == "from b").then_some(body)
    })
    .await;
    assert_eq!(seen, patched);
    assert!(invalidations_of(&a).await > before);
    // Versions created in B: A's next reads follow, never older.
    for n in 0..5 {
        create_version(&b, &id).await;
        let want = 3 + n;
        let got = eventually(WAIT, || async {
            let body = a.get_json(&format!("/scripts/{id}"), 200).await;
            (body["latestVersion"] == want).then_some(body)
        })
        .await;
        assert_eq!(got["latestVersion"], want);
    }
}

async fn invalidations_of(app: &TestApp) -> i64 {
    cache_stat(app, "invalidations").await
}

#[actix_web::test]
async fn a_lost_listener_serves_nothing_stale_after_it_reconnects() {
    let app = spawn_app().await;
    let id = published_script(&app, "rc-4").await;
    wait_serving(&app, &id).await;
    let db = app.db().await;
    let killed = db
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND query LIKE 'LISTEN%'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(killed.len(), 1, "one listener");
    eventually(WAIT, || async {
        (cache_stat(&app, "suspensions").await >= 1).then_some(())
    })
    .await;
    assert_eq!(cache_stat(&app, "entries").await, 0, "everything dropped");
    // A change nobody may have heard of (written straight to the table).
    db.execute(
        "UPDATE scripts SET name = 'behind your back', revision = revision + 1 WHERE id = $1::text::uuid",
        &[&id],
    )
    .await
    .unwrap();
    let body = app.get_json(&format!("/scripts/{id}"), 200).await;
    assert_eq!(body["name"], "behind your back");
    // Once LISTEN is back, memory serves again, and still nothing stale.
    wait_serving(&app, &id).await;
    let (body, hit) = read_counted(&app, &id).await;
    assert!(hit);
    assert_eq!(body["name"], "behind your back");
}

#[actix_web::test]
async fn the_cache_keeps_to_its_byte_bound_least_recently_used_first() {
    let app = spawn_app_with(|s| s.actors.read_cache_bytes = 2048).await;
    let mut ids = Vec::new();
    for n in 0..12 {
        ids.push(published_script(&app, &format!("rc-5-{n}")).await);
    }
    wait_serving(&app, &ids[0]).await;
    for id in &ids {
        let body = app.get_json(&format!("/scripts/{id}"), 200).await;
        assert_eq!(str_of(&body["id"]), *id);
        assert!(cache_stat(&app, "bytes").await <= 2048);
    }
    assert!(cache_stat(&app, "evictions").await > 0);
    // The most recent is still there; the first went long ago.
    assert!(read_counted(&app, &ids[11]).await.1);
    assert!(!read_counted(&app, &ids[0]).await.1);
    // A cache of 0 bytes serves everything from the database.
    let off = spawn_app_with(|s| s.actors.read_cache_bytes = 0).await;
    let id = published_script(&off, "rc-5-off").await;
    for _ in 0..3 {
        let (body, hit) = read_counted(&off, &id).await;
        assert!(!hit);
        assert_eq!(str_of(&body["id"]), id);
    }
}
