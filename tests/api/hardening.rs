//! Attacks found by outsiders (issue 12): each test drives scriptd as a hostile
//! or broken client would, over real HTTP.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::helpers::*;
use crate::security::{now, token, SECRET};

async fn sse_sessions(client: &reqwest::Client, url: &str) -> i64 {
    let res = client
        .get(url)
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("admin/actors");
    let body: Value = res.json().await.expect("admin body");
    body["sse"]["sessions"].as_i64().expect("sse.sessions")
}

/// A client that opens a stream and never reads it (a tiny receive buffer, so
/// the kernel does not read for it either).
async fn stalled_stream(port: u16, target: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket
        .connect(([127, 0, 0, 1], port).into())
        .await
        .expect("connect");
    let head = format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer mallory\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

#[actix_web::test]
async fn stalled_replays_neither_starve_the_pool_nor_grow_memory() {
    let db_url = fresh_database().await;
    // 300 events of ~100 KiB each (30 MiB rendered) in tenant "big".
    connect(&db_url)
        .await
        .batch_execute(
            "INSERT INTO events (tenant_id, name, correlation_id, success, payload, occurred_at) \
             SELECT 'big', 'Big.Event.v1', 'c-' || g, true, \
                    jsonb_build_object('blob', repeat(md5(g::text), 3200)), now() \
             FROM generate_series(1, 300) g",
        )
        .await
        .unwrap();
    let server = ServerProcess::start(
        &db_url,
        &[
            ("SCRIPTD__DATABASE__POOL_SIZE", "16"),
            ("SCRIPTD__EVENTS__SLOW_READER_MS", "1500"),
        ],
    )
    .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let admin = server.url("/admin/actors");

    let mut stalled = Vec::new();
    for _ in 0..32 {
        stalled
            .push(stalled_stream(server.port(), "/events/stream?tenantId=big&lastEventId=0").await);
    }
    eventually(Duration::from_secs(20), || {
        let (c, a) = (client.clone(), admin.clone());
        async move { (sse_sessions(&c, &a).await == 32).then_some(()) }
    })
    .await;

    // Another tenant works as if nothing happened: every write and every
    // readiness probe is a 2xx.
    for i in 0..40 {
        let res = client
            .post(server.url("/scripts"))
            .bearer_auth(TOKEN)
            .header("x-tenant-id", "other")
            .json(&json!({ "name": "s", "slug": format!("s-{i}") }))
            .send()
            .await
            .expect("write while replays stall");
        assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
        let ready = client.get(server.url("/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 200);
    }
    let rss_mib = server.rss_kib() / 1024;
    assert!(rss_mib < 160, "RSS {rss_mib} MiB with 32 stalled replays");

    // Readers that stopped reading are dropped, like slow live readers.
    eventually(Duration::from_secs(30), || {
        let (c, a) = (client.clone(), admin.clone());
        async move { (sse_sessions(&c, &a).await == 0).then_some(()) }
    })
    .await;
    let rss_mib = server.rss_kib() / 1024;
    assert!(rss_mib < 160, "RSS {rss_mib} MiB after the stalled replays");
    drop(stalled);

    // A reader that reads gets the whole history in pages: 300 events, in
    // order, no gap, no duplicate, then nothing more.
    let mut reader = SseClient::connect(
        client
            .request(
                Method::GET,
                server.url("/events/stream?tenantId=big&lastEventId=0"),
            )
            .bearer_auth(TOKEN),
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..300 {
        let ev = reader
            .next(Duration::from_secs(20))
            .await
            .expect("a replayed event");
        assert_eq!(ev.event, "Big.Event.v1");
        assert_eq!(
            ev.json()["payload"]["blob"].as_str().map(str::len),
            Some(102_400)
        );
        ids.push(ev.id());
    }
    let first = ids[0];
    assert_eq!(ids, (first..first + 300).collect::<Vec<_>>());
    reader.expect_silence(Duration::from_millis(300)).await;
}

// ---------- rate limits are charged after authentication ----------

fn jwt_limited(s: &mut scriptd::Settings) {
    jwt_auth(s, SECRET);
    limit_rates(s, 1, 1000, 3);
}

#[actix_web::test]
async fn requests_that_do_not_authenticate_spend_no_tenant_budget() {
    let app = spawn_app_with(jwt_limited).await;
    let outsider = token(json!({ "sub": "mallory", "tenant": "other", "exp": now() + 600 }));
    // 60 attacks on tenant "victim": garbage tokens, no token, a valid token of
    // another tenant, by header and by query. Each is refused as what it is,
    // never 429.
    for i in 0..60 {
        let path = if i % 2 == 0 {
            "/scripts"
        } else {
            "/scripts?tenantId=victim"
        };
        let mut req = app.raw(Method::GET, path);
        if i % 2 == 0 {
            req = req.header("x-tenant-id", "victim");
        }
        let (req, status, code) = match i % 3 {
            0 => (req.bearer_auth("garbage.not.ajwt"), 401, "UNAUTHORIZED"),
            1 => (req, 401, "UNAUTHORIZED"),
            _ => (req.bearer_auth(&outsider), 403, "FORBIDDEN"),
        };
        assert_error(req.send().await.unwrap(), status, code).await;
    }
    // The SSE route's query token is verified before any charge too.
    let req = app.stream_req("tenantId=victim&access_token=garbage");
    send_err(req, 401, "UNAUTHORIZED").await;

    // The victim still has its whole burst, and the limit still holds for it.
    let victim = token(json!({ "sub": "vic", "tenant": "victim", "exp": now() + 600 }));
    let as_victim = || app.with_token(Method::GET, "/scripts", &victim, "victim");
    for _ in 0..3 {
        send_json(as_victim(), 200).await;
    }
    let mut limited = false;
    for _ in 0..10 {
        let res = send(as_victim()).await;
        if res.status() == 429 {
            assert!(res.headers().contains_key("retry-after"));
            assert_error(res, 429, "RATE_LIMITED").await;
            limited = true;
            break;
        }
    }
    assert!(limited, "the victim's own burst is still limited");
}

#[actix_web::test]
async fn a_token_with_an_empty_sub_is_401() {
    let app = spawn_app_with(|s| jwt_auth(s, SECRET)).await;
    for sub in ["", "  "] {
        let t = token(json!({ "sub": sub, "tenant": TENANT, "exp": now() + 600 }));
        let res = send(app.with_token(Method::GET, "/scripts", &t, TENANT)).await;
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
        assert_error(res, 401, "UNAUTHORIZED").await;
    }
    let t = token(json!({ "sub": "alice", "tenant": TENANT, "exp": now() + 600 }));
    send_json(app.with_token(Method::GET, "/scripts", &t, TENANT), 200).await;
}

// ---------- metric labels come from a closed set ----------

async fn metrics_text(app: &TestApp) -> String {
    let res = app.admin_get("/metrics").await;
    assert_eq!(res.status(), 200);
    res.text().await.unwrap()
}

fn request_series(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.contains("http_requests_total{"))
        .map(|l| {
            l.rsplit_once(' ')
                .map_or(l, |(series, _)| series)
                .to_string()
        })
        .collect()
}

#[actix_web::test]
async fn made_up_methods_and_paths_add_no_metric_series() {
    let app = spawn_app().await;
    let before = request_series(&metrics_text(&app).await);
    for i in 0..300 {
        let method = Method::from_bytes(format!("BREW{i}").as_bytes()).unwrap();
        let path = if i % 2 == 0 {
            "/healthz".to_string()
        } else {
            format!("/made-up/{i}")
        };
        let res = send(app.raw(method, &path)).await;
        assert!(res.status().is_client_error(), "{}", res.status());
    }
    let text = metrics_text(&app).await;
    let build = format!(
        "scriptd_build_info{{commit=\"{}\",version=\"{}\"}} 1",
        scriptd::GIT_COMMIT,
        scriptd::VERSION
    );
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("scriptd_build_info"))
            .collect::<Vec<_>>(),
        [build]
    );
    assert!(!text.contains("BREW"), "a client's method became a label");
    assert!(!text.contains("made-up"), "a client's path became a label");
    let after = request_series(&text);
    let new: Vec<&String> = after.iter().filter(|s| !before.contains(s)).collect();
    // One series each: the route pattern or `unmatched`, the method `other`.
    assert_eq!(
        new,
        vec![
            r#"scriptd_http_requests_total{method="GET",route="/metrics",status="200"}"#,
            r#"scriptd_http_requests_total{method="other",route="/healthz",status="405"}"#,
            r#"scriptd_http_requests_total{method="other",route="unmatched",status="404"}"#,
        ],
        "{new:?}"
    );
}

// ---------- no spelling of access_token reaches the log ----------

#[actix_web::test]
async fn query_tokens_are_redacted_from_the_log_however_they_are_encoded() {
    let server = ServerProcess::start(&fresh_database().await, &[]).await;
    let client = reqwest::Client::new();
    let names = [
        "access_token",
        "access%5Ftoken",
        "%61ccess_token",
        "access_%74oken",
        "%61%63%63%65%73%73%5F%74%6F%6B%65%6E",
    ];
    for (i, name) in names.iter().enumerate() {
        let secret = format!("secret{i}-9f3b2c.payload.signature");
        let res = client
            .get(server.url(&format!("/events/stream?tenantId=t1&{name}={secret}")))
            .send()
            .await
            .unwrap();
        // Every spelling is the token (and a valid one in dev mode).
        assert_eq!(res.status(), 200, "{name}");
        drop(res);
    }
    let finished = |text: &str| {
        text.lines()
            .filter(|l| l.contains("request finished"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let log = eventually(Duration::from_secs(10), || {
        let text = server.log_text();
        async move { (finished(&text).len() >= names.len()).then_some(text) }
    })
    .await;
    let lines = finished(&log);
    assert_eq!(lines.len(), names.len(), "{log}");
    assert!(lines.iter().all(|l| l.contains("=REDACTED")), "{log}");
    assert!(!log.contains("9f3b2c"), "a token reached the log:\n{log}");
}

// ---------- one finish, one event, in commit order ----------

#[actix_web::test]
async fn every_event_of_a_run_once_and_finished_last() {
    let app = spawn_app().await;
    let script = published_script(&app, "once").await;
    let mut stream = app.sse(TENANT, "").await;
    let mut runs = Vec::new();
    for r in 0..8 {
        let run = start_run(&app, &script).await;
        for i in 0..3 {
            let key = format!("k{i}");
            let res = upsert(&app, &run, json!([{ "key": key, "numVal": r * 10 + i }])).await;
            json_of(res, 200).await;
        }
        let status = if r % 2 == 0 { "SUCCEEDED" } else { "FAILED" };
        json_of(finish(&app, &run, status).await, 200).await;
        runs.push((run, status));
    }
    // Whatever is still queued in the process is appended after this.
    app.state.services.events.flushed().await;

    let expected_names = |_: &str| {
        vec![
            "Run.Started.v1".to_string(),
            "Run.VarsUpserted.v1".to_string(),
            "Run.VarsUpserted.v1".to_string(),
            "Run.VarsUpserted.v1".to_string(),
            "Run.Finished.v1".to_string(),
        ]
    };
    // In the table: exactly five per run, in this order, nothing else.
    let db = app.db().await;
    let total: i64 = scalar(&db, "SELECT count(*) FROM events", &[]).await;
    assert_eq!(total, 8 * 5);
    for (run, status) in &runs {
        let rows = db
            .query(
                "SELECT name, payload FROM events WHERE correlation_id = $1 ORDER BY id",
                &[run],
            )
            .await
            .unwrap();
        let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(names, expected_names(run), "run {run}");
        let last: Value = rows[4].get(1);
        assert_eq!(last, json!({ "runId": run, "status": status }));
    }
    // On the stream: the same 40 events, each run's in that order, then nothing.
    let mut seen: std::collections::HashMap<String, Vec<String>> = Default::default();
    for _ in 0..40 {
        let ev = stream
            .next(Duration::from_secs(10))
            .await
            .expect("an event");
        let run = ev.json()["correlationId"].as_str().unwrap().to_string();
        seen.entry(run).or_default().push(ev.event);
    }
    stream.expect_silence(Duration::from_millis(500)).await;
    assert_eq!(seen.len(), 8);
    for (run, _) in &runs {
        assert_eq!(seen[run], expected_names(run), "run {run} on the stream");
    }
}

// ---------- idempotency keys belong to their caller ----------

#[actix_web::test]
async fn idempotency_keys_never_cross_callers() {
    let app = spawn_app_with(|s| jwt_auth(s, SECRET)).await;
    let alice = token(json!({ "sub": "alice", "tenant": TENANT, "exp": now() + 600 }));
    let bob = token(json!({ "sub": "bob", "tenant": TENANT, "exp": now() + 600 }));
    let send = |who: &str, key: &str, user: &str| {
        app.with_token(Method::POST, "/commands", who, TENANT)
            .header("Idempotency-Key", key)
            .json(&json!({ "command": "Orders.Place.v1", "actor": { "userId": user } }))
            .send()
    };

    // Bob's refused request first: it is not stored, so Alice's own request
    // with the same key and body is hers.
    let refused = send(&bob, "k-1", "alice").await.unwrap();
    assert!(refused.headers().contains_key("idempotency-ttl"));
    assert_error(refused, 403, "FORBIDDEN").await;
    let first = send(&alice, "k-1", "alice").await.unwrap();
    assert!(first.headers().get("idempotent-replayed").is_none());
    let accepted = json_of(first, 202).await;

    // Alice's recorded answer is replayed to Alice only; Bob gets his own 403.
    let again = send(&alice, "k-1", "alice").await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(json_of(again, 202).await, accepted);
    let refused = send(&bob, "k-1", "alice").await.unwrap();
    assert!(refused.headers().get("idempotent-replayed").is_none());
    assert_error(refused, 403, "FORBIDDEN").await;

    // Bob's own request with the same key is a new command, not Alice's.
    let his = send(&bob, "k-1", "bob").await.unwrap();
    assert!(his.headers().get("idempotent-replayed").is_none());
    let his = json_of(his, 202).await;
    assert_ne!(his["commandId"], accepted["commandId"]);

    let db = app.db().await;
    let commands: i64 = scalar(&db, "SELECT count(*) FROM command_outbox", &[]).await;
    assert_eq!(commands, 2);
    let keys: Vec<(String, i16)> = db
        .query(
            "SELECT caller, response_status FROM idempotency_keys ORDER BY caller",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(keys, vec![("alice".into(), 202), ("bob".into(), 202)]);
}

#[actix_web::test]
async fn every_answer_of_a_keyed_route_says_its_idempotency_ttl() {
    let app = spawn_app_with(|s| s.limits.default_body_bytes = 1024).await;
    let script = create_script(&app, "ttl").await;
    let versions = format!("/scripts/{}/versions", script["id"].as_str().unwrap());
    for path in ["/scripts", versions.as_str(), "/runs", "/commands"] {
        let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
            (
                app.req(Method::POST, path)
                    .header("content-type", "application/json")
                    .body("{nope"),
                400,
                "MALFORMED_JSON",
            ),
            (
                app.req(Method::POST, path)
                    .header("content-type", "text/plain")
                    .body("{}"),
                415,
                "UNSUPPORTED_MEDIA_TYPE",
            ),
            (
                app.raw(Method::POST, path)
                    .header("x-tenant-id", TENANT)
                    .json(&json!({})),
                401,
                "UNAUTHORIZED",
            ),
        ];
        for (req, status, code) in cases {
            let res = req.header("Idempotency-Key", "k").send().await.unwrap();
            assert_eq!(
                res.headers()
                    .get("idempotency-ttl")
                    .map(|v| v.to_str().unwrap()),
                Some("86400"),
                "{path} {status}"
            );
            assert_error(res, status, code).await;
        }
    }
    // Over the body limit of /scripts (64 KiB by default; 1 KiB here).
    let res = app
        .req(Method::POST, "/scripts")
        .header("Idempotency-Key", "k")
        .json(&json!({ "name": "x".repeat(2000), "slug": "big" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["idempotency-ttl"], "86400");
    assert_error(res, 413, "PAYLOAD_TOO_LARGE").await;
    // Not a keyed route: no such header.
    let res = app.get("/scripts").await;
    assert!(res.headers().get("idempotency-ttl").is_none());
}

// ---------- smaller gaps ----------

#[actix_web::test]
async fn a_trickled_body_times_out_with_408() {
    let app = spawn_app_with(|s| s.http.body_timeout_secs = 1).await;
    let port: u16 = app.address.rsplit(':').next().unwrap().parse().unwrap();
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let head = format!(
        "POST /commands HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nx-tenant-id: {TENANT}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // One more byte now and then, never the whole body.
    let answer = tokio::time::timeout(Duration::from_secs(20), async {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        loop {
            tokio::select! {
                n = stream.read(&mut buf) => {
                    let n = n.unwrap();
                    if n == 0 { break; }
                    got.extend_from_slice(&buf[..n]);
                    if got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"}") { break; }
                }
                _ = tokio::time::sleep(Duration::from_millis(300)) => {
                    let _ = stream.write_all(b" ").await;
                }
            }
        }
        String::from_utf8_lossy(&got).to_string()
    })
    .await
    .expect("an answer before the client gives up");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"REQUEST_TIMEOUT""#), "{answer}");
}

#[actix_web::test]
async fn head_is_answered_like_get_without_a_body() {
    let app = spawn_app().await;
    let script = create_script(&app, "head").await;
    let path = format!("/scripts/{}", script["id"].as_str().unwrap());
    for p in ["/healthz", "/scripts", path.as_str()] {
        let get = app.get(p).await;
        assert_eq!(get.status(), 200);
        let etag = get.headers().get("etag").cloned();
        let len = get.bytes().await.unwrap().len();
        let head = app.req(Method::HEAD, p).send().await.unwrap();
        assert_eq!(head.status(), 200, "{p}");
        assert_eq!(head.headers().get("etag").cloned(), etag, "{p}");
        assert_eq!(
            head.headers()["content-length"],
            len.to_string().as_str(),
            "{p}"
        );
        assert!(head.bytes().await.unwrap().is_empty());
    }
    // HEAD on a POST-only route is still 405.
    let res = app.req(Method::HEAD, "/commands").send().await.unwrap();
    assert_eq!(res.status(), 405);
}

// ---------- every JSON number written reads back ----------

/// f64::MAX and its neighbours, stored in jsonb (which prints numbers in full,
/// 309 digits for f64::MAX), must parse back: the fuzzer found a command whose
/// payload did not, which failed every read of it with a 500 and stopped the
/// dev worker on that row.
#[actix_web::test]
async fn extreme_json_numbers_read_back_as_written() {
    let app = spawn_app().await;
    let numbers = json!([
        f64::MAX,
        -f64::MAX,
        f64::MIN_POSITIVE,
        5e-324,
        1e300,
        0.1,
        i64::MAX,
        u64::MAX
    ]);
    // A command: the outbox reads the row back to complete it.
    let cid = uuid::Uuid::now_v7().to_string();
    let body = json!({ "command": "Numbers.Check.v1", "correlationId": cid,
        "actor": { "userId": "u" }, "payload": { "n": numbers }, "context": { "n": numbers } });
    app.post_json("/commands", &body, 202).await;
    let done = eventually(Duration::from_secs(10), || async {
        let c = app.get_json(&format!("/commands/{cid}"), 200).await;
        (c["status"] == "COMPLETED").then_some(c)
    })
    .await;
    assert_eq!(done["result"]["success"], true);
    // A version's graph and a run variable.
    let id = script_id(&app, "numbers").await;
    let graph = json!({ "nodes": [{ "id": "n1", "n": numbers }], "edges": [] });
    let path = format!("/scripts/{id}/versions");
    app.post_json(&path, &json!({ "graphJson": graph }), 201)
        .await;
    let v = app.get_json(&format!("{path}/1"), 200).await;
    assert_eq!(v["graphJson"], graph);
    publish_version(&app, &id, 1).await;
    let run = start_run(&app, &id).await;
    let items = json!([{ "key": "n", "jsonVal": numbers }, { "key": "m", "numVal": f64::MAX }]);
    json_of(upsert(&app, &run, items).await, 200).await;
    let r = app.get_json(&format!("/runs/{run}"), 200).await;
    assert_eq!(strings(&r["vars"], "key"), ["m", "n"]);
    assert_eq!(r["vars"][0]["numVal"], json!(f64::MAX));
    assert_eq!(r["vars"][1]["jsonVal"], numbers);
}
