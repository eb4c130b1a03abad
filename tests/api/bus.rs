//! Commands over the bus: a real `nats-server` with JetStream per test, real
//! handlers (a test handler on its own connection, and `scriptd dev-handler`),
//! scriptd in process and as separate processes.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy};
use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(20);
const COMMAND: &str = "Contacts.UpsertAndLink.v1";

fn command_body() -> Value {
    json!({"command": COMMAND, "actor": {"userId": "alice"},
        "context": {"applicationId": "app_1"}, "payload": {"contacts": [{"role": "applicant"}]}})
}

/// Posts a command as `tenant`: (correlationId, commandId).
async fn post_command_as(app: &TestApp, tenant: &str) -> (String, String) {
    let req = app
        .as_tenant(Method::POST, "/commands", tenant)
        .json(&command_body());
    let body = send_json(req, 202).await;
    (str_of(&body["correlationId"]), str_of(&body["commandId"]))
}

async fn post_command(app: &TestApp) -> (String, String) {
    post_command_as(app, TENANT).await
}

async fn status_of(app: &TestApp, cid: &str) -> Value {
    app.get_json(&format!("/commands/{cid}"), 200).await
}

async fn wait_status(app: &TestApp, cid: &str, want: &str) -> Value {
    eventually(WAIT, || async {
        let c = status_of(app, cid).await;
        (c["status"] == want).then_some(c)
    })
    .await
}

/// A handler written against NATS directly, as an integration in any
/// language would be: a durable pull consumer on the commands stream.
struct TestHandler {
    js: jetstream::Context,
    messages: pull::Stream,
}

/// One command as the handler received it.
struct Received {
    body: Value,
    msg_id: String,
    subject: String,
}

impl TestHandler {
    async fn new(nats: &NatsServer) -> TestHandler {
        let (_, js) = nats.client().await;
        let stream = js.get_stream("SCRIPTD_COMMANDS").await.expect("the stream");
        let consumer = stream
            .get_or_create_consumer(
                "test-handler",
                pull::Config {
                    durable_name: Some("test-handler".into()),
                    ack_policy: AckPolicy::Explicit,
                    ..Default::default()
                },
            )
            .await
            .expect("a consumer");
        let messages = consumer.messages().await.expect("messages");
        TestHandler { js, messages }
    }

    async fn next(&mut self) -> Received {
        let m = tokio::time::timeout(WAIT, self.messages.next())
            .await
            .expect("a command within the deadline")
            .expect("the stream goes on")
            .expect("a message");
        m.ack().await.expect("ack");
        let msg_id = m
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.to_string())
            .unwrap_or_default();
        Received {
            body: serde_json::from_slice(&m.payload).expect("a JSON command"),
            msg_id,
            subject: m.subject.to_string(),
        }
    }

    /// No further command arrives within `quiet`.
    async fn expect_none(&mut self, quiet: Duration) {
        if let Ok(Some(m)) = tokio::time::timeout(quiet, self.messages.next()).await {
            let m = m.expect("a message");
            panic!("unexpected command {}", String::from_utf8_lossy(&m.payload));
        }
    }

    async fn publish_raw(&self, subject: String, body: Vec<u8>) {
        self.js
            .publish(subject, body.into())
            .await
            .expect("publish")
            .await
            .expect("publish ack");
    }

    /// Publishes a completion for `command` (a received body) with `fields`.
    async fn complete(&self, command: &Value, fields: Value) {
        let mut body = json!({"commandId": command["commandId"], "tenantId": command["tenantId"]});
        for (k, v) in fields.as_object().expect("an object") {
            body[k] = v.clone();
        }
        let subject = format!(
            "scriptd.completions.{}",
            command["command"].as_str().unwrap()
        );
        self.publish_raw(subject, body.to_string().into_bytes())
            .await;
    }
}

/// The bus counters of `/metrics` (process-wide totals of this app).
async fn bus_metrics(app: &TestApp) -> HashMap<String, f64> {
    bus_counters(
        &app.admin_get("/metrics")
            .await
            .text()
            .await
            .expect("metrics"),
    )
}

/// The bus and timeout lines of a `/metrics` text, without `scriptd_`.
fn bus_counters(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| l.starts_with("scriptd_bus_") || l.starts_with("scriptd_outbox_timeouts"))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((
                k.trim_start_matches("scriptd_").to_string(),
                v.parse().ok()?,
            ))
        })
        .collect()
}

async fn metric(app: &TestApp, key: &str) -> f64 {
    bus_metrics(app).await.get(key).copied().unwrap_or(-1.0)
}

/// Events and outbox rows of the database, counted.
async fn count(app: &TestApp, sql: &str) -> i64 {
    app.db()
        .await
        .query_one(sql, &[])
        .await
        .expect("count")
        .get(0)
}

#[actix_web::test]
async fn a_command_reaches_a_handler_and_its_completion_the_stream() {
    let mut nats = NatsServer::start().await;
    let app = spawn_app_with(|s| bus_settings(s, &nats)).await;
    let mut handler = TestHandler::new(&nats).await;
    let ready = app.get_json("/readyz", 200).await;
    assert_eq!(ready, json!({"status": "ok", "bus": "connected"}));

    let (cid, id) = post_command(&app).await;
    let mut sse = app.sse(TENANT, &format!("&correlationId={cid}")).await;
    let got = handler.next().await;
    assert_eq!(got.subject, format!("scriptd.commands.{COMMAND}"));
    assert_eq!(got.msg_id, format!("{id}.1"));
    let b = &got.body;
    let keys: Vec<&String> = b.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        vec![
            "actor",
            "attempt",
            "command",
            "commandId",
            "context",
            "correlationId",
            "createdAt",
            "deadline",
            "payload",
            "tenantId"
        ]
    );
    assert_eq!(b["commandId"], id.as_str());
    assert_eq!(b["command"], COMMAND);
    assert_eq!(b["correlationId"], cid.as_str());
    assert_eq!(b["tenantId"], TENANT);
    assert_eq!(b["actor"], json!({"userId": "alice"}));
    assert_eq!(b["context"], json!({"applicationId": "app_1"}));
    assert_eq!(b["payload"], json!({"contacts": [{"role": "applicant"}]}));
    assert_eq!(b["attempt"], 1);
    let created = chrono::DateTime::parse_from_rfc3339(b["createdAt"].as_str().unwrap()).unwrap();
    let deadline = chrono::DateTime::parse_from_rfc3339(b["deadline"].as_str().unwrap()).unwrap();
    let timeout = (deadline - created).num_seconds();
    assert!(
        (299..=301).contains(&timeout),
        "deadline {timeout}s after creation"
    );

    // Published and not yet answered: PROCESSING, one attempt.
    let c = wait_status(&app, &cid, "PROCESSING").await;
    assert_eq!(c["attempts"], 1);
    assert_eq!(c["result"], Value::Null);

    handler
        .complete(
            b,
            json!({"event": "Contacts.Upserted.v1", "success": true,
            "payload": {"contacts": [{"role": "applicant", "contactId": "cnt_9"}]}, "attempt": 1}),
        )
        .await;
    let ev = sse.next(WAIT).await.expect("the completion event");
    assert_eq!(ev.event, "Contacts.Upserted.v1");
    let data = ev.json();
    assert_eq!(data["success"], true);
    assert_eq!(data["correlationId"], cid.as_str());
    assert_eq!(data["payload"]["contacts"][0]["contactId"], "cnt_9");
    let c = status_of(&app, &cid).await;
    assert_eq!(c["status"], "COMPLETED");
    assert_eq!(c["attempts"], 1);
    assert_eq!(c["result"]["event"], "Contacts.Upserted.v1");

    // The same completion again (a handler's redelivery): acked, ignored.
    handler
        .complete(
            b,
            json!({"event": "Contacts.Upserted.v1", "success": true, "attempt": 1}),
        )
        .await;
    eventually(WAIT, || async {
        (metric(&app, "bus_completions_total{outcome=\"ignored\"}").await == 1.0).then_some(())
    })
    .await;
    sse.expect_silence(Duration::from_millis(300)).await;
    handler.expect_none(Duration::from_millis(300)).await;
    let m = bus_metrics(&app).await;
    assert_eq!(m["bus_connected"], 1.0);
    assert_eq!(m["bus_commands_published_total"], 1.0);
    assert_eq!(m["bus_publish_failures_total"], 0.0);
    assert_eq!(m["bus_completions_total{outcome=\"applied\"}"], 1.0);
    assert_eq!(m["bus_completions_total{outcome=\"malformed\"}"], 0.0);
    assert_eq!(m["outbox_timeouts_total"], 0.0);
    assert_eq!(count(&app, "SELECT count(*) FROM events").await, 1);

    // Each state in turn: PENDING while NATS is away, PROCESSING once
    // published, COMPLETED once answered.
    drop(handler);
    nats.stop();
    eventually(WAIT, || async {
        (app.get_json("/readyz", 200).await["bus"] == "disconnected").then_some(())
    })
    .await;
    let (cid, id) = post_command(&app).await;
    let c = status_of(&app, &cid).await;
    assert_eq!(
        (&c["status"], &c["attempts"]),
        (&json!("PENDING"), &json!(0))
    );
    nats.restart().await;
    let mut handler = TestHandler::new(&nats).await;
    let got = handler.next().await;
    assert_eq!(got.msg_id, format!("{id}.1"));
    let c = wait_status(&app, &cid, "PROCESSING").await;
    assert_eq!(c["attempts"], 1);
    handler
        .complete(
            &got.body,
            json!({"event": "Contacts.Upserted.v1", "success": true}),
        )
        .await;
    wait_status(&app, &cid, "COMPLETED").await;
    handler.expect_none(Duration::from_millis(300)).await;
    assert_eq!(count(&app, "SELECT count(*) FROM events").await, 2);
}

#[actix_web::test]
async fn dev_handler_completes_commands_end_to_end() {
    let nats = NatsServer::start().await;
    // The handler starts first and waits for scriptd to create the streams.
    let _handler = DevHandlerProcess::start(&nats);
    let app = spawn_app_with(|s| bus_settings(s, &nats)).await;
    let mut sse = app.sse(TENANT, "").await;
    let mut cids = Vec::new();
    for _ in 0..20 {
        cids.push(post_command(&app).await.0);
    }
    let mut seen = Vec::new();
    for _ in 0..20 {
        let ev = sse.next(WAIT).await.expect("a completion");
        assert_eq!(ev.event, "Contacts.Upserted.v1");
        seen.push(str_of(&ev.json()["correlationId"]));
    }
    sse.expect_silence(Duration::from_millis(300)).await;
    seen.sort();
    cids.sort();
    assert_eq!(seen, cids);
    let done = "SELECT count(*) FROM command_outbox WHERE status = 'COMPLETED' AND attempts = 1";
    assert_eq!(count(&app, done).await, 20);
    assert_eq!(count(&app, "SELECT count(*) FROM command_outbox").await, 20);
    assert_eq!(count(&app, "SELECT count(*) FROM events").await, 20);
}

/// (status, attempts, events in the database) once the command has `status`.
async fn outbox_row(
    db: &tokio_postgres::Client,
    cid: &str,
    status: &str,
) -> Option<(String, i32, i64)> {
    let cid = uuid::Uuid::parse_str(cid).unwrap();
    let row = db
        .query_one(
            "SELECT status, attempts, (SELECT count(*) FROM events) FROM command_outbox \
             WHERE correlation_id = $1",
            &[&cid],
        )
        .await
        .unwrap();
    let got = (
        row.get::<_, String>(0),
        row.get::<_, i32>(1),
        row.get::<_, i64>(2),
    );
    (got.0 == status).then_some(got)
}

/// Every command of the outbox is COMPLETED, once: one event per
/// correlation id, the dev handler's, and nothing else.
async fn assert_each_completed_once(db: &tokio_postgres::Client, n: i64) {
    let row = db
        .query_one(
            "SELECT (SELECT count(*) FROM command_outbox), \
                    (SELECT count(*) FROM command_outbox WHERE status = 'COMPLETED'), \
                    (SELECT count(*) FROM events), \
                    (SELECT count(DISTINCT correlation_id) FROM events), \
                    (SELECT count(*) FROM events WHERE name <> 'Contacts.Upserted.v1'), \
                    (SELECT count(*) FROM command_outbox o WHERE NOT EXISTS \
                       (SELECT 1 FROM events e WHERE e.correlation_id = o.correlation_id::text))",
            &[],
        )
        .await
        .expect("counts");
    let got: Vec<i64> = (0..6).map(|i| row.get(i)).collect();
    assert_eq!(
        got,
        vec![n, n, n, n, 0, 0],
        "rows, completed, events, distinct, other, missing"
    );
}

#[actix_web::test]
async fn two_processes_complete_2000_commands_each_exactly_once() {
    let nats = NatsServer::start().await;
    let db_url = fresh_database().await;
    let env = [
        ("SCRIPTD__BUS__URL", nats.url()),
        ("SCRIPTD__OUTBOX__DISPATCHER", "bus".to_string()),
        ("SCRIPTD__DATABASE__POOL_SIZE", "8".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = ServerProcess::start(&db_url, &env).await;
    let b = ServerProcess::start(&db_url, &env).await;
    let _handler = DevHandlerProcess::start(&nats);
    let client = reqwest::Client::new();
    let procs = [&a, &b];
    let posts = futures::stream::iter(0..2000)
        .map(|i| {
            let req = client
                .post(procs[i % 2].url("/commands"))
                .bearer_auth(TOKEN)
                .header("x-tenant-id", TENANT)
                .json(&command_body());
            async move { send(req).await.status().as_u16() }
        })
        .buffer_unordered(32)
        .collect::<Vec<u16>>()
        .await;
    assert!(posts.iter().all(|s| *s == 202), "every POST is accepted");
    let db = connect(&db_url).await;
    eventually(Duration::from_secs(120), || async {
        let done: i64 = db
            .query_one(
                "SELECT count(*) FROM command_outbox WHERE status = 'COMPLETED'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (done == 2000).then_some(())
    })
    .await;
    assert_each_completed_once(&db, 2000).await;
    // One publish each (one PENDING → PROCESSING transition), none failed,
    // and the completions split between the processes add up to 2,000.
    let attempts: i64 = db
        .query_one(
            "SELECT count(*) FROM command_outbox WHERE attempts = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, 2000);
    let mut totals = HashMap::<String, f64>::new();
    for p in procs {
        for (k, v) in process_metrics(&client, p).await {
            *totals.entry(k).or_default() += v;
        }
    }
    assert_eq!(totals["bus_commands_published_total"], 2000.0);
    assert_eq!(totals["bus_publish_failures_total"], 0.0);
    assert_eq!(totals["bus_completions_total{outcome=\"applied\"}"], 2000.0);
    assert_eq!(totals["bus_completions_total{outcome=\"malformed\"}"], 0.0);
}

async fn process_metrics(client: &reqwest::Client, p: &ServerProcess) -> HashMap<String, f64> {
    let res = send(client.get(p.url("/metrics")).bearer_auth(ADMIN)).await;
    bus_counters(&res.text().await.expect("metrics"))
}

#[actix_web::test]
async fn nats_away_for_10s_under_load_loses_nothing_and_never_5xx() {
    let mut nats = NatsServer::start().await;
    let app = spawn_app_with(|s| {
        bus_settings(s, &nats);
        s.outbox.poll_interval_ms = 100;
        s.outbox.backoff_max_ms = 1000;
    })
    .await;
    let handler = DevHandlerProcess::start(&nats);
    // Load from start to end: one POST every ~20 ms, on its own task.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loader = {
        let (stop, req) = (stop.clone(), app.req(Method::POST, "/commands"));
        actix_web::rt::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let req = req.try_clone().unwrap().json(&command_body());
                statuses.push(send(req).await.status().as_u16());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            statuses
        })
    };
    let completed = "SELECT count(*) FROM command_outbox WHERE status = 'COMPLETED'";
    eventually(WAIT, || async {
        (count(&app, completed).await >= 30).then_some(())
    })
    .await;
    nats.stop();
    eventually(WAIT, || async {
        let r = app.get_json("/readyz", 200).await;
        (r["bus"] == "disconnected").then_some(())
    })
    .await;
    // Ten seconds away, readiness unaffected meanwhile.
    let before = count(&app, "SELECT count(*) FROM command_outbox").await;
    let away = std::time::Instant::now();
    while away.elapsed() < Duration::from_secs(10) {
        assert_eq!(app.get_json("/readyz", 200).await["status"], "ok");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every command accepted while NATS was away waited in the outbox (how
    // many were posted depends on the machine's load, not on scriptd).
    let total = count(&app, "SELECT count(*) FROM command_outbox").await;
    let during = count(
        &app,
        "SELECT count(*) FROM command_outbox WHERE status = 'PENDING'",
    )
    .await;
    assert!(
        total - before >= 10,
        "only {} posts while NATS was away",
        total - before
    );
    assert!(
        during >= total - before,
        "commands waited in the outbox: {during} of {}",
        total - before
    );
    nats.restart().await;
    let back = count(&app, "SELECT count(*) FROM command_outbox").await;
    eventually(WAIT, || async {
        (count(&app, completed).await > back).then_some(())
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = loader.await.unwrap();
    assert!(
        statuses.iter().all(|s| *s == 202),
        "every POST accepted: {statuses:?}"
    );
    let n = statuses.len() as i64;
    eventually(Duration::from_secs(60), || async {
        let done = count(
            &app,
            "SELECT count(*) FROM command_outbox WHERE status = 'COMPLETED'",
        )
        .await;
        (done == n).then_some(())
    })
    .await;
    assert_each_completed_once(&app.db().await, n).await;
    let r = app.get_json("/readyz", 200).await;
    assert_eq!(r, json!({"status": "ok", "bus": "connected"}));
    drop(handler);
}

#[actix_web::test]
async fn a_completion_sent_while_scriptd_is_dead_is_applied_once_after_restart() {
    let nats = NatsServer::start().await;
    let db_url = fresh_database().await;
    let env = [
        ("SCRIPTD__BUS__URL", nats.url()),
        ("SCRIPTD__OUTBOX__DISPATCHER", "bus".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut first = ServerProcess::start(&db_url, &env).await;
    let mut handler = TestHandler::new(&nats).await;
    let client = reqwest::Client::new();
    let req = client
        .post(first.url("/commands"))
        .bearer_auth(TOKEN)
        .header("x-tenant-id", TENANT)
        .json(&command_body());
    let cid = str_of(&send_json(req, 202).await["correlationId"]);
    let got = handler.next().await;
    let db = connect(&db_url).await;
    eventually(WAIT, || outbox_row(&db, &cid, "PROCESSING")).await;
    // kill -9 after the publish committed, before any completion.
    first.child.kill().expect("kill -9");
    first.child.wait().expect("reaped");
    handler
        .complete(
            &got.body,
            json!({"event": "Contacts.Upserted.v1", "success": true, "attempt": 1}),
        )
        .await;
    let second = ServerProcess::start(&db_url, &env).await;
    let done = eventually(WAIT, || outbox_row(&db, &cid, "COMPLETED")).await;
    assert_eq!(done, ("COMPLETED".to_string(), 1, 1));
    handler.expect_none(Duration::from_millis(500)).await;
    let m = process_metrics(&client, &second).await;
    assert_eq!(m["bus_completions_total{outcome=\"applied\"}"], 1.0);
    assert_eq!(m["bus_commands_published_total"], 0.0);
}

/// A bus app whose handlers must answer within 300 ms, three attempts.
async fn impatient_app(nats: &NatsServer) -> TestApp {
    spawn_app_with(|s| {
        bus_settings(s, nats);
        s.outbox.completion_timeout_secs = 0.3;
        s.outbox.max_attempts = 3;
        s.outbox.backoff_base_ms = 50;
        s.outbox.backoff_max_ms = 100;
        s.outbox.poll_interval_ms = 50;
    })
    .await
}

#[actix_web::test]
async fn a_handler_that_never_answers_times_out_each_attempt_then_fails() {
    let nats = NatsServer::start().await;
    let app = impatient_app(&nats).await;
    let mut handler = TestHandler::new(&nats).await;
    let (cid, id) = post_command(&app).await;
    let mut sse = app.sse(TENANT, &format!("&correlationId={cid}")).await;
    for attempt in 1..=3 {
        let got = handler.next().await;
        assert_eq!(got.msg_id, format!("{id}.{attempt}"));
        assert_eq!(got.body["attempt"], attempt);
    }
    let ev = sse.next(WAIT).await.expect("the failure event");
    assert_eq!(ev.event, "Command.Failed.v1");
    let data = ev.json();
    assert_eq!(data["success"], false);
    assert_eq!(
        data["payload"],
        json!({"command": COMMAND, "error": "timed out"})
    );
    let c = status_of(&app, &cid).await;
    assert_eq!(c["status"], "FAILED");
    assert_eq!(c["attempts"], 3);
    handler.expect_none(Duration::from_millis(500)).await;
    sse.expect_silence(Duration::from_millis(100)).await;
    assert_eq!(metric(&app, "outbox_timeouts_total").await, 3.0);
    let db = app.db().await;
    let row = db
        .query_one("SELECT last_error FROM command_outbox", &[])
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, Option<String>>(0).as_deref(),
        Some("timed out")
    );
    assert_eq!(count(&app, "SELECT count(*) FROM events").await, 1);
}

#[actix_web::test]
async fn retry_true_republishes_and_success_false_fails_at_once() {
    let nats = NatsServer::start().await;
    let app = impatient_app(&nats).await;
    let mut handler = TestHandler::new(&nats).await;

    // retry, then success on the second attempt.
    let (cid, id) = post_command(&app).await;
    let first = handler.next().await;
    handler
        .complete(
            &first.body,
            json!({"success": false, "retry": true, "error": "busy", "attempt": 1}),
        )
        .await;
    let second = handler.next().await;
    assert_eq!(second.msg_id, format!("{id}.2"));
    // A late failure for attempt 1 is stale: ignored.
    handler
        .complete(
            &first.body,
            json!({"success": false, "error": "late", "attempt": 1}),
        )
        .await;
    handler
        .complete(
            &second.body,
            json!({"event": "Contacts.Upserted.v1", "success": true, "attempt": 2}),
        )
        .await;
    let c = wait_status(&app, &cid, "COMPLETED").await;
    assert_eq!(c["attempts"], 2);

    // success: false → FAILED with the handler's own event, no retry.
    let (cid2, _) = post_command(&app).await;
    let got = handler.next().await;
    handler
        .complete(
            &got.body,
            json!({"event": "Contacts.Rejected.v1", "success": false,
            "payload": {"reason": "duplicate"}, "error": "duplicate contact"}),
        )
        .await;
    let c = wait_status(&app, &cid2, "FAILED").await;
    assert_eq!(c["attempts"], 1);
    assert_eq!(c["result"]["event"], "Contacts.Rejected.v1");
    assert_eq!(c["result"]["success"], false);
    assert_eq!(c["result"]["payload"], json!({"reason": "duplicate"}));

    // retry until attempts run out → Command.Failed.v1 with the last error.
    let (cid3, _) = post_command(&app).await;
    for attempt in 1..=3 {
        let got = handler.next().await;
        assert_eq!(got.body["attempt"], attempt);
        handler
            .complete(
                &got.body,
                json!({"success": false, "retry": true,
                "error": format!("busy {attempt}"), "attempt": attempt}),
            )
            .await;
    }
    let c = wait_status(&app, &cid3, "FAILED").await;
    assert_eq!(c["attempts"], 3);
    assert_eq!(c["result"]["event"], "Command.Failed.v1");
    assert_eq!(
        c["result"]["payload"],
        json!({"command": COMMAND, "error": "busy 3"})
    );

    handler.expect_none(Duration::from_millis(500)).await;
    eventually(WAIT, || async {
        (metric(&app, "bus_completions_total{outcome=\"ignored\"}").await == 1.0).then_some(())
    })
    .await;
    let m = bus_metrics(&app).await;
    // retry, success; failure; three retries (the late one is the ignored one).
    assert_eq!(m["bus_completions_total{outcome=\"applied\"}"], 6.0);
    assert_eq!(m["outbox_timeouts_total"], 0.0);
    assert_eq!(count(&app, "SELECT count(*) FROM events").await, 3);
}

#[actix_web::test]
async fn malformed_unknown_and_foreign_completions_are_acked_and_counted() {
    let nats = NatsServer::start().await;
    let app = spawn_app_with(|s| bus_settings(s, &nats)).await;
    let mut handler = TestHandler::new(&nats).await;
    let (other_cid, _) = post_command_as(&app, "other").await;
    let foreign = handler.next().await;
    let (cid, _) = post_command(&app).await;
    let mine = handler.next().await;
    let subject = format!("scriptd.completions.{COMMAND}");
    for body in [
        b"not json".to_vec(),
        b"[1, 2]".to_vec(),
        json!({"commandId": mine.body["commandId"], "success": true})
            .to_string()
            .into_bytes(),
        json!({"commandId": "nope", "tenantId": TENANT, "success": true})
            .to_string()
            .into_bytes(),
        json!({"commandId": mine.body["commandId"], "tenantId": TENANT, "success": "yes"})
            .to_string()
            .into_bytes(),
        vec![0xff, 0xfe, 0x00],
    ] {
        handler.publish_raw(subject.clone(), body).await;
    }
    // An unknown command, and the other tenant's command claimed by this tenant.
    let unknown =
        json!({"commandId": uuid::Uuid::now_v7(), "tenantId": TENANT, "command": COMMAND});
    handler.complete(&unknown, json!({"success": true})).await;
    let stolen =
        json!({"commandId": foreign.body["commandId"], "tenantId": TENANT, "command": COMMAND});
    handler.complete(&stolen, json!({"success": true})).await;
    // Also on a subject no handler would use: still consumed.
    handler
        .publish_raw("scriptd.completions.x".into(), b"{}".to_vec())
        .await;
    handler.complete(&mine.body, json!({"success": true})).await;
    wait_status(&app, &cid, "COMPLETED").await;
    eventually(WAIT, || async {
        let m = bus_metrics(&app).await;
        let got = (
            m["bus_completions_total{outcome=\"malformed\"}"],
            m["bus_completions_total{outcome=\"ignored\"}"],
            m["bus_completions_total{outcome=\"applied\"}"],
        );
        (got == (7.0, 2.0, 1.0)).then_some(())
    })
    .await;
    // The other tenant's command is untouched; a default event completed mine.
    let other = send_json(
        app.as_tenant(Method::GET, &format!("/commands/{other_cid}"), "other"),
        200,
    )
    .await;
    assert_eq!(other["status"], "PROCESSING");
    let c = status_of(&app, &cid).await;
    assert_eq!(c["result"]["event"], "Command.Completed.v1");
    assert_eq!(count(&app, "SELECT count(*) FROM events").await, 1);
    // The consumer acked everything: nothing is waiting for redelivery.
    let (_, js) = nats.client().await;
    let info = eventually(WAIT, || async {
        let mut c: jetstream::consumer::PullConsumer = js
            .get_stream("SCRIPTD_COMPLETIONS")
            .await
            .ok()?
            .get_consumer("completions")
            .await
            .ok()?;
        let info = c.info().await.ok()?.clone();
        (info.num_ack_pending == 0 && info.num_pending == 0).then_some(info)
    })
    .await;
    assert_eq!(info.delivered.stream_sequence, 10);
}

#[actix_web::test]
async fn complete_over_http_checks_roles_tenants_and_finality() {
    let app = spawn_app_with(|s| s.outbox.dev_worker = false).await;
    let (cid, _) = post_command(&app).await;
    let mut sse = app.sse(TENANT, &format!("&correlationId={cid}")).await;
    let path = format!("/commands/{cid}/complete");
    let ok = json!({"event": "Contacts.Upserted.v1", "success": true, "payload": {"a": 1}});
    // Bad input: each a 400 naming the field; nothing changes.
    for (body, field) in [
        (json!({"success": true}), "event"),
        (json!({"event": "lower.case.v1", "success": true}), "event"),
        (json!({"event": "A.B.v1"}), "success"),
        (
            json!({"event": "A.B.v1", "success": true, "payload": [1]}),
            "payload",
        ),
        (
            json!({"event": "A.B.v1", "success": true, "error": "x".repeat(4097)}),
            "error",
        ),
        (
            json!({"event": "A.B.v1", "success": true, "retry": true}),
            "retry",
        ),
    ] {
        let res = app.post_err(&path, &body, 400, "VALIDATION_FAILED").await;
        assert!(
            fields(&res).iter().any(|f| f.contains(field))
                || res["message"].as_str().unwrap().contains(field),
            "{body}: {res}"
        );
    }
    send_err(
        app.req(Method::POST, &path)
            .header("content-type", "application/json")
            .body("{"),
        400,
        "MALFORMED_JSON",
    )
    .await;
    app.post_err(
        "/commands/not-a-uuid/complete",
        &ok,
        400,
        "VALIDATION_FAILED",
    )
    .await;
    let unknown = format!("/commands/{}/complete", uuid::Uuid::now_v7());
    app.post_err(&unknown, &ok, 404, "NOT_FOUND").await;
    send_err(
        app.as_tenant(Method::POST, &path, "other").json(&ok),
        404,
        "NOT_FOUND",
    )
    .await;
    assert_eq!(status_of(&app, &cid).await["status"], "PENDING");

    // A PENDING command completes over HTTP; the event is streamed.
    let c = app.post_json(&path, &ok, 200).await;
    assert_eq!(c["status"], "COMPLETED");
    assert_eq!(c["correlationId"], cid.as_str());
    assert_eq!(c["result"]["event"], "Contacts.Upserted.v1");
    assert_eq!(c["result"]["payload"], json!({"a": 1}));
    assert_eq!(c, status_of(&app, &cid).await);
    let ev = sse.next(WAIT).await.expect("the event");
    assert_eq!(ev.event, "Contacts.Upserted.v1");

    // Final: 409 COMMAND_FINAL with the status, and nothing changes.
    let fail = json!({"event": "Contacts.Rejected.v1", "success": false, "error": "no"});
    let res = app.post_err(&path, &fail, 409, "COMMAND_FINAL").await;
    assert_eq!(res["details"], json!({"status": "COMPLETED"}));
    assert_eq!(status_of(&app, &cid).await, c);
    sse.expect_silence(Duration::from_millis(300)).await;

    // success: false → FAILED with the given event.
    let (cid2, _) = post_command(&app).await;
    let c2 = app
        .post_json(&format!("/commands/{cid2}/complete"), &fail, 200)
        .await;
    assert_eq!(c2["status"], "FAILED");
    assert_eq!(c2["result"]["event"], "Contacts.Rejected.v1");
    assert_eq!(c2["result"]["success"], false);
    assert_eq!(count(&app, "SELECT count(*) FROM events").await, 2);
}

#[actix_web::test]
async fn complete_over_http_needs_the_worker_or_admin_role_with_jwt() {
    let secret = "bus-test-secret";
    let app = spawn_app_with(|s| {
        jwt_auth(s, secret);
        s.outbox.dev_worker = false;
    })
    .await;
    let token = |roles: Value| {
        let claims = json!({"sub": "alice", "tenant": TENANT, "roles": roles,
            "exp": chrono::Utc::now().timestamp() + 600});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let post = |t: &str| {
        app.with_token(Method::POST, "/commands", t, TENANT)
            .json(&command_body())
    };
    let plain = token(json!([]));
    let mut cids = Vec::new();
    for _ in 0..2 {
        cids.push(str_of(&send_json(post(&plain), 202).await["correlationId"]));
    }
    let ok = json!({"event": "Contacts.Upserted.v1", "success": true});
    let complete = |t: &str, cid: &str| {
        app.with_token(
            Method::POST,
            &format!("/commands/{cid}/complete"),
            t,
            TENANT,
        )
        .json(&ok)
    };
    send_err(complete(&plain, &cids[0]), 403, "FORBIDDEN").await;
    send_err(
        complete(&token(json!(["reader"])), &cids[0]),
        403,
        "FORBIDDEN",
    )
    .await;
    send_err(complete("forged.token.here", &cids[0]), 401, "UNAUTHORIZED").await;
    let worker = token(json!(["worker"]));
    assert_eq!(
        send_json(complete(&worker, &cids[0]), 200).await["status"],
        "COMPLETED"
    );
    let admin = token(json!(["admin"]));
    assert_eq!(
        send_json(complete(&admin, &cids[1]), 200).await["status"],
        "COMPLETED"
    );
    send_err(complete(&worker, &cids[1]), 409, "COMMAND_FINAL").await;
}

#[actix_web::test]
async fn a_stream_without_the_needed_subjects_is_a_clear_error_at_start() {
    let nats = NatsServer::start().await;
    let (_, js) = nats.client().await;
    js.create_stream(stream::Config {
        name: "SCRIPTD_COMMANDS".into(),
        subjects: vec!["elsewhere.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut settings = test_settings(&fresh_database().await);
    bus_settings(&mut settings, &nats);
    let err = scriptd::Application::build(settings)
        .await
        .err()
        .expect("refused");
    let text = format!("{err:#}");
    assert!(text.contains("SCRIPTD_COMMANDS"), "{text}");
    assert!(text.contains("scriptd.commands.>"), "{text}");

    // The bus dispatcher without a bus.
    let mut settings = test_settings(&fresh_database().await);
    settings.outbox.dispatcher = Some(scriptd::settings::DispatcherKind::Bus);
    let err = scriptd::Application::build(settings)
        .await
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("bus.url"), "{err:#}");
}
