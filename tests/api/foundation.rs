//! The HTTP edge: health, readiness, error shapes, correlation ids, CORS.

use std::time::Duration;

use reqwest::Method;
use scriptd::embedded::{EmbeddedOptions, EmbeddedPostgres};

use crate::helpers::*;

#[actix_web::test]
async fn healthz_answers_ok_without_auth() {
    let app = spawn_app().await;
    let res = send(app.raw(Method::GET, "/healthz")).await;
    assert_eq!(
        json_of(res, 200).await,
        serde_json::json!({"status": "ok", "version": scriptd::VERSION, "commit": scriptd::GIT_COMMIT})
    );
    assert_eq!(scriptd::GIT_COMMIT.len(), 12, "{}", scriptd::GIT_COMMIT);
}

#[actix_web::test]
async fn readyz_is_200_when_the_database_answers() {
    let app = spawn_app().await;
    let res = send(app.raw(Method::GET, "/readyz")).await;
    assert_eq!(res.status(), 200);
}

#[actix_web::test]
async fn unknown_route_is_404_in_the_error_shape() {
    let app = spawn_app().await;
    let res = app.get("/no/such/route").await;
    let cid = res.headers().get("correlation-id").cloned();
    assert!(cid.is_some());
    assert_error(res, 404, "NOT_FOUND").await;
}

#[actix_web::test]
async fn wrong_method_is_405_with_allow() {
    let app = spawn_app().await;
    let res = send(app.raw(Method::DELETE, "/healthz")).await;
    assert_eq!(res.headers()["allow"], "GET");
    assert_error(res, 405, "METHOD_NOT_ALLOWED").await;
}

#[actix_web::test]
async fn correlation_id_is_echoed_generated_or_rejected() {
    let app = spawn_app().await;
    let health = || app.raw(Method::GET, "/healthz");
    let res = send(health().header("Correlation-Id", "req-1.a:b_c")).await;
    assert_eq!(res.headers()["correlation-id"], "req-1.a:b_c");

    let res = send(health()).await;
    let generated = res.headers()["correlation-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");

    for bad in ["has space", &"x".repeat(129)] {
        let req = health().header("Correlation-Id", bad);
        let body = send_err(req, 400, "VALIDATION_FAILED").await;
        assert_eq!(fields(&body), vec!["Correlation-Id"]);
    }
}

#[actix_web::test]
async fn cors_preflight_is_answered_without_auth_for_listed_origins() {
    let app = spawn_app_with(|s| s.http.cors_origins = vec!["http://editor.test".into()]).await;
    let res = app
        .raw(Method::OPTIONS, "/scripts")
        .header("Origin", "http://editor.test")
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization, content-type, x-tenant-id",
        )
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "http://editor.test"
    );

    let from = |origin: &str| send(app.raw(Method::GET, "/healthz").header("Origin", origin));
    let res = from("http://editor.test").await;
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "http://editor.test"
    );
    let exposed = res.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    let expected = "etag location correlation-id retry-after idempotent-replayed idempotency-ttl";
    for h in expected.split(' ') {
        assert!(exposed.contains(h), "{exposed}");
    }

    // An origin that is not listed gets no CORS headers.
    let res = from("http://evil.test").await;
    assert!(res.headers().get("access-control-allow-origin").is_none());
}

#[actix_web::test]
async fn readyz_turns_503_at_once_when_shutdown_begins() {
    let app = spawn_app().await;
    // Keep one connection open so the request after stop() reaches the app.
    app.state.stop_accepting();
    let res = send(app.raw(Method::GET, "/readyz")).await;
    assert!(res.headers().contains_key("retry-after"));
    assert_error(res, 503, "UNAVAILABLE").await;
    app.stopper.stop().await;
    // The listener is closed: no new connections.
    let refused = reqwest::Client::new()
        .get(app.url("/healthz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(refused.is_err());
}

#[actix_web::test]
async fn readyz_follows_the_database_down_and_back_without_restart() {
    let dir = tempdir("readyz");
    let opts = EmbeddedOptions::new(dir.join("pg"));
    let pg = tokio::task::spawn_blocking({
        let opts = opts.clone();
        move || EmbeddedPostgres::start(&opts).unwrap()
    })
    .await
    .unwrap();
    scriptd::embedded::ensure_database(&pg, "scriptd")
        .await
        .unwrap();
    let url = pg.connection_string("scriptd");
    let app = spawn_app_on(&url, |s| s.database.connect_timeout_ms = 500).await;
    assert_eq!(send(app.raw(Method::GET, "/readyz")).await.status(), 200);

    let pg = tokio::task::spawn_blocking(move || {
        pg.stop().unwrap();
        pg
    })
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let res = send(app.raw(Method::GET, "/readyz")).await;
    assert_error(res, 503, "UNAVAILABLE").await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );

    let pg2 = tokio::task::spawn_blocking(move || {
        drop(pg);
        EmbeddedPostgres::start(&opts).unwrap()
    })
    .await
    .unwrap();
    eventually(Duration::from_secs(20), || async {
        let res = app.raw(Method::GET, "/readyz").send().await.ok()?;
        (res.status() == 200).then_some(())
    })
    .await;
    app.stopper.stop().await;
    tokio::task::spawn_blocking(move || drop(pg2))
        .await
        .unwrap();
    std::fs::remove_dir_all(dir).ok();
}

pub fn tempdir(label: &str) -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("scriptd-{label}-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
