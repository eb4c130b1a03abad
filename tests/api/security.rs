//! Idempotency keys, JWT auth, rate limits, the admin endpoints.

use std::time::Duration;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::helpers::*;

fn version_body() -> Value {
    json!({ "graphJson": graph(), "changelog": "keyed" })
}

fn keyed_req(app: &TestApp, path: &str, key: &str) -> reqwest::RequestBuilder {
    app.req(Method::POST, path).header("Idempotency-Key", key)
}

async fn keyed(app: &TestApp, path: &str, key: &str, body: &Value) -> reqwest::Response {
    send(keyed_req(app, path, key).json(body)).await
}

async fn versions_in_db(app: &TestApp, id: &str) -> i64 {
    let sql = "SELECT count(*) FROM script_versions WHERE script_id = $1";
    scalar(&app.db().await, sql, &[&uuid::Uuid::parse_str(id).unwrap()]).await
}

/// A new script's id and its versions route.
async fn versions_route(app: &TestApp, slug: &str) -> (String, String) {
    let id = script_id(app, slug).await;
    let path = format!("/scripts/{id}/versions");
    (id, path)
}

#[actix_web::test]
async fn a_keyed_retry_replays_the_first_response_byte_for_byte() {
    let app = spawn_app().await;
    let (id, path) = versions_route(&app, "idem").await;
    let id = id.as_str();
    let first = keyed(&app, &path, "key-1", &version_body()).await;
    assert_eq!(first.status(), 201);
    assert_eq!(first.headers()["idempotency-ttl"], "86400");
    assert!(first.headers().get("idempotent-replayed").is_none());
    let location = first.headers()["location"].clone();
    let first_body = first.bytes().await.unwrap();

    let retry = keyed_req(&app, &path, "key-1").header("Correlation-Id", "retry-1");
    let second = send(retry.json(&version_body())).await;
    assert_eq!(second.status(), 201);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    assert_eq!(second.headers()["idempotency-ttl"], "86400");
    assert_eq!(second.headers()["location"], location);
    assert_eq!(second.headers()["correlation-id"], "retry-1");
    assert_eq!(second.headers()["content-type"], "application/json");
    assert_eq!(second.bytes().await.unwrap(), first_body);
    assert_eq!(versions_in_db(&app, id).await, 1);

    // Same key, another body.
    let other = json!({ "graphJson": graph(), "changelog": "other" });
    let res = keyed(&app, &path, "key-1", &other).await;
    assert!(res.headers().contains_key("idempotency-ttl"));
    assert_error(res, 422, "IDEMPOTENCY_KEY_REUSED").await;
    // Responses of keyed routes carry the TTL even without a key.
    let res = app.post(&path, &version_body()).await;
    assert_eq!(res.headers()["idempotency-ttl"], "86400");
    // A malformed key.
    let res = keyed(&app, &path, &"k".repeat(256), &version_body()).await;
    assert_error(res, 400, "VALIDATION_FAILED").await;
}

#[actix_web::test]
async fn refusals_are_replayed_too() {
    let app = spawn_app().await;
    create_script(&app, "taken").await;
    let body = json!({ "name": "x", "slug": "taken" });
    let first = keyed(&app, "/scripts", "k", &body).await;
    assert_eq!(first.status(), 409);
    let first_body = first.bytes().await.unwrap();
    let second = keyed(&app, "/scripts", "k", &body).await;
    assert_eq!(second.status(), 409);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    assert_eq!(second.bytes().await.unwrap(), first_body);
}

#[actix_web::test]
async fn a_key_in_flight_is_409_and_an_abandoned_one_is_taken_over() {
    let app = spawn_app().await;
    let (id, path) = versions_route(&app, "inflight").await;
    let id = id.as_str();
    let raw = serde_json::to_vec(&version_body()).unwrap();
    let fingerprint = Sha256::digest(&raw).to_vec();
    let db = app.db().await;
    // The first request holds the key (another process, mid-write).
    db.execute(
        "INSERT INTO idempotency_keys (tenant_id, caller, method, path, key, fingerprint, state, locked_until, created_at, expires_at, claim_id)
         VALUES ($1, 'alice', 'POST', $2, 'held', $3, 'IN_FLIGHT', now() + interval '1 hour', now(), now() + interval '1 day', gen_random_uuid())",
        &[&TENANT, &path, &fingerprint],
    )
    .await
    .unwrap();
    let held = || {
        keyed_req(&app, &path, "held")
            .header("content-type", "application/json")
            .body(raw.clone())
    };
    send_err(held(), 409, "IDEMPOTENCY_KEY_IN_USE").await;
    assert_eq!(versions_in_db(&app, id).await, 0);
    // Its process crashed: once the in-flight lease has passed, a retry takes over.
    db.execute(
        "UPDATE idempotency_keys SET locked_until = now() - interval '1 second'",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(send(held()).await.status(), 201);
    assert_eq!(versions_in_db(&app, id).await, 1);
    let state: String = scalar(
        &db,
        "SELECT state FROM idempotency_keys WHERE key = 'held'",
        &[],
    )
    .await;
    assert_eq!(state, "COMPLETED");
}

#[actix_web::test]
async fn twenty_parallel_identical_requests_create_one_version() {
    let app = spawn_app().await;
    let (id, path) = versions_route(&app, "par").await;
    let id = id.as_str();
    let reqs: Vec<_> = (0..20)
        .map(|_| keyed_req(&app, &path, "same").json(&version_body()))
        .collect();
    let results = send_all(reqs).await;
    let mut created = 0;
    for res in results {
        match res.status().as_u16() {
            201 => created += 1,
            409 => {
                assert_error(res, 409, "IDEMPOTENCY_KEY_IN_USE").await;
            }
            s => panic!("status {s}"),
        };
    }
    assert!(created >= 1);
    assert_eq!(versions_in_db(&app, id).await, 1);
}

#[actix_web::test]
async fn keys_are_scoped_per_tenant_and_expire() {
    let app = spawn_app_with(|s| s.idempotency.ttl_hours = 1.0 / 3600.0).await;
    let body = json!({ "command": "A.B.v1", "actor": { "userId": "u" } });
    let a = keyed(&app, "/commands", "shared", &body).await;
    assert_eq!(a.headers()["idempotency-ttl"], "1");
    let a = json_of(a, 202).await;
    let t2 = app.as_tenant(Method::POST, "/commands", "t2");
    let b = send_json(t2.header("Idempotency-Key", "shared").json(&body), 202).await;
    assert_ne!(
        a["correlationId"], b["correlationId"],
        "two tenants: two creations"
    );
    let again = json_of(keyed(&app, "/commands", "shared", &body).await, 202).await;
    assert_eq!(again["correlationId"], a["correlationId"]);
    // After the TTL the key is free again: a new command.
    let fresh = eventually(Duration::from_secs(10), || async {
        let res = keyed(&app, "/commands", "shared", &body).await;
        let replayed = res.headers().contains_key("idempotent-replayed");
        let v = json_of(res, 202).await;
        (!replayed).then_some(v)
    })
    .await;
    assert_ne!(fresh["correlationId"], a["correlationId"]);
    // The background purge deletes expired keys (the other tenant's, by now).
    eventually(Duration::from_secs(10), || async {
        let purged = app.state.services.idempotency.purge().await.unwrap();
        (purged >= 1).then_some(())
    })
    .await;
}

#[actix_web::test]
async fn runs_are_keyed_too() {
    let app = spawn_app().await;
    let id = script_id(&app, "rk").await;
    create_version(&app, &id).await;
    let body = json!({ "scriptId": id, "version": 1 });
    let a = json_of(keyed(&app, "/runs", "r1", &body).await, 201).await;
    let res = keyed(&app, "/runs", "r1", &body).await;
    assert_eq!(res.headers()["idempotent-replayed"], "true");
    assert_eq!(json_of(res, 201).await["runId"], a["runId"]);
}

// ---------- JWT ----------

pub(crate) const SECRET: &str = "jwt-test-secret";

pub(crate) fn token(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

pub(crate) fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn jwt_app() -> TestApp {
    spawn_app_with(|s| jwt_auth(s, SECRET)).await
}

async fn get_as(app: &TestApp, token: &str, tenant: &str, path: &str) -> reqwest::Response {
    send(app.with_token(Method::GET, path, token, tenant)).await
}

#[actix_web::test]
async fn jwt_tokens_are_verified_and_bound_to_tenants() {
    let app = jwt_app().await;
    let good = token(json!({ "sub": "user-1", "tenant": "t1", "exp": now() + 600 }));
    assert_eq!(get_as(&app, &good, "t1", "/scripts").await.status(), 200);
    let res = get_as(&app, &good, "t2", "/scripts").await;
    assert_error(res, 403, "FORBIDDEN").await;

    let multi = token(json!({ "sub": "user-1", "tenant": ["t1", "t2"], "exp": now() + 600 }));
    assert_eq!(get_as(&app, &multi, "t2", "/scripts").await.status(), 200);

    let expired = token(json!({ "sub": "u", "tenant": "t1", "exp": now() - 600 }));
    let early =
        token(json!({ "sub": "u", "tenant": "t1", "exp": now() + 600, "nbf": now() + 300 }));
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({ "sub": "u", "tenant": "t1", "exp": now() + 600 }),
        &EncodingKey::from_secret(b"another secret").unwrap(),
    )
    .unwrap();
    // expired, not yet valid, forged; and dev-style tokens mean nothing in jwt mode
    for refused in [expired.as_str(), &early, &forged, "alice"] {
        let res = get_as(&app, refused, "t1", "/scripts").await;
        assert_error(res, 401, "UNAUTHORIZED").await;
    }

    // The actor id is the subject: audit and createdById record it.
    let req = app.with_token(Method::POST, "/scripts", &good, "t1");
    let s = send_json(req.json(&json!({ "name": "j", "slug": "j" })), 201).await;
    assert_eq!(s["createdById"], "user-1");
    // Commands must be on behalf of the subject.
    let cmd = |user: &str| {
        app.with_token(Method::POST, "/commands", &good, "t1")
            .json(&json!({ "command": "A.B.v1", "actor": { "userId": user } }))
    };
    send_err(cmd("someone-else"), 403, "FORBIDDEN").await;
    assert_eq!(send(cmd("user-1")).await.status(), 202);
}

#[actix_web::test]
async fn the_admin_role_opens_the_admin_endpoints() {
    let app = jwt_app().await;
    let admin = token(json!({ "sub": "ops", "roles": ["admin"], "exp": now() + 600 }));
    let user =
        token(json!({ "sub": "u", "tenant": "t1", "roles": ["editor"], "exp": now() + 600 }));
    let get = |path: &str, token: &str| send(app.raw(Method::GET, path).bearer_auth(token));
    assert_eq!(get("/admin/actors", &admin).await.status(), 200);
    assert_error(get("/admin/actors", &user).await, 403, "FORBIDDEN").await;
    assert_error(get("/metrics", &user).await, 403, "FORBIDDEN").await;
    assert_eq!(get("/metrics", &admin).await.status(), 200);
}

#[actix_web::test]
async fn rs256_tokens_verify_with_the_public_key_file() {
    let dir = crate::foundation::tempdir("rsa");
    let key = dir.join("key.pem");
    let public = dir.join("public.pem");
    let ok = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .status()
        .unwrap()
        .success()
        && std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(&public)
            .status()
            .unwrap()
            .success();
    assert!(ok, "openssl could not make a key pair");
    let public_path = public.clone();
    let app = spawn_app_with(move |s| {
        s.auth.mode = scriptd::settings::AuthMode::Jwt;
        s.auth.jwt_public_key_file = public_path;
    })
    .await;
    let pem = std::fs::read(&key).unwrap();
    let claims = json!({ "sub": "rsa-user", "tenant": "t1", "exp": now() + 600 });
    let signed = encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(&pem).unwrap(),
    )
    .unwrap();
    assert_eq!(get_as(&app, &signed, "t1", "/scripts").await.status(), 200);
    let hs = token(claims);
    let res = get_as(&app, &hs, "t1", "/scripts").await;
    assert_error(res, 401, "UNAUTHORIZED").await;
    std::fs::remove_dir_all(dir).ok();
}

#[actix_web::test]
async fn dev_mode_refuses_a_public_bind_unless_allowed() {
    let db = fresh_database().await;
    let mut settings = test_settings(&db);
    settings.http.bind = "0.0.0.0".into();
    let err = scriptd::Application::build(settings.clone())
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("allow_dev_on_public"), "{err}");
    settings.auth.allow_dev_on_public = true;
    assert!(scriptd::Application::build(settings).await.is_ok());
}

// ---------- rate limits ----------

#[actix_web::test]
async fn a_burst_over_the_tenant_limit_gets_429_and_others_are_unaffected() {
    let app = spawn_app_with(|s| limit_rates(s, 2, 1000, 5)).await;
    let mut limited = None;
    for _ in 0..20 {
        let res = app.get("/scripts").await;
        if res.status() == 429 {
            limited = Some(res);
            break;
        }
    }
    let res = limited.expect("the burst was never limited");
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    assert_error(res, 429, "RATE_LIMITED").await;
    let other = send(app.as_tenant(Method::GET, "/scripts", "t2")).await;
    assert_eq!(other.status(), 200);
    for _ in 0..20 {
        assert_eq!(send(app.raw(Method::GET, "/healthz")).await.status(), 200);
    }
}

#[actix_web::test]
async fn a_token_is_limited_across_tenants() {
    let app = spawn_app_with(|s| limit_rates(s, 1000, 2, 5)).await;
    let mut statuses = Vec::new();
    for i in 0..12 {
        let res = get_as(&app, "greedy", &format!("t{i}"), "/scripts").await;
        statuses.push(res.status().as_u16());
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    let res = get_as(&app, "polite", "t0", "/scripts").await;
    assert_eq!(res.status(), 200);
}

// ---------- admin ----------

#[actix_web::test]
async fn admin_actors_shows_what_earlier_requests_started() {
    let app = spawn_app().await;
    let id = script_id(&app, "adm").await;
    create_version(&app, &id).await;
    let _stream = app.sse(TENANT, "").await;
    let body = json_of(app.admin_get("/admin/actors").await, 200).await;
    assert_eq!(body["kinds"]["script"]["live"], 1);
    assert_eq!(body["kinds"]["script"]["started"], 1);
    assert_eq!(body["kinds"]["eventhub"]["live"], 1);
    assert_eq!(body["kinds"]["outbox"]["live"], 1);
    for kind in ["script", "run", "outbox", "eventhub"] {
        for field in ["live", "started", "restarted", "passivated"] {
            assert!(body["kinds"][kind][field].is_u64(), "{kind}.{field}");
        }
    }
    let actor = body["actors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == id)
        .expect("the script actor");
    assert_eq!(actor["kind"], "script");
    assert_eq!(actor["tenantId"], TENANT);
    assert_eq!(actor["mailbox"], 0);
    assert_eq!(actor["restarts"], 0);
    assert!(actor["lastActivityAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(body["sse"]["sessions"], 1);
    assert_eq!(body["sse"]["byTenant"][TENANT], 1);

    let only = json_of(app.admin_get("/admin/actors?kind=run").await, 200).await;
    assert_eq!(only["actors"], json!([]));
    let res = app.admin_get("/admin/actors?kind=nope").await;
    assert_error(res, 400, "VALIDATION_FAILED").await;
    let as_user = app.raw(Method::GET, "/admin/actors").bearer_auth(TOKEN);
    send_err(as_user, 403, "FORBIDDEN").await;
    send_err(app.raw(Method::GET, "/admin/actors"), 401, "UNAUTHORIZED").await;
}

#[actix_web::test]
async fn metrics_speak_prometheus() {
    let app = spawn_app().await;
    create_script(&app, "met").await;
    let res = app.admin_get("/metrics").await;
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = res.text().await.unwrap();
    for needle in [
        "scriptd_http_requests_total{method=\"POST\",route=\"/scripts\",status=\"201\"} 1",
        "scriptd_http_request_duration_seconds_bucket",
        "scriptd_db_pool_connections{state=\"idle\"}",
        "scriptd_actors_live{kind=\"script\"}",
        "scriptd_actor_mailbox_depth{kind=\"eventhub\"}",
        "scriptd_outbox_commands{status=\"pending\"}",
        "scriptd_outbox_oldest_pending_age_seconds",
        "scriptd_sse_sessions",
        "scriptd_events_appended_total",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    let as_user = app.raw(Method::GET, "/metrics").bearer_auth(TOKEN);
    send_err(as_user, 403, "FORBIDDEN").await;
}

#[actix_web::test]
async fn a_5xx_frees_the_key() {
    let app = spawn_app().await;
    let (_, path) = versions_route(&app, "fivexx").await;
    let db = app.db().await;
    // Make the write itself fail inside PostgreSQL: a 500, not a refusal.
    db.batch_execute(
        "ALTER TABLE script_versions ADD CONSTRAINT test_fail CHECK (false) NOT VALID",
    )
    .await
    .unwrap();
    let res = keyed(&app, &path, "retry-me", &version_body()).await;
    assert!(res.headers().contains_key("idempotency-ttl"));
    assert_error(res, 500, "INTERNAL").await;
    let sql = "SELECT count(*) FROM idempotency_keys WHERE key = 'retry-me'";
    let left: i64 = scalar(&db, sql, &[]).await;
    assert_eq!(left, 0, "the key was not freed");
    db.batch_execute("ALTER TABLE script_versions DROP CONSTRAINT test_fail")
        .await
        .unwrap();
    // The retry is a first attempt again, not a replay of the 500.
    let res = keyed(&app, &path, "retry-me", &version_body()).await;
    assert!(res.headers().get("idempotent-replayed").is_none());
    assert_eq!(json_of(res, 201).await["version"], 1);
}
