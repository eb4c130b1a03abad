//! Commands, the outbox, the event hub and the SSE stream.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actors::domain::command::{Command, Completion};
use actors::domain::NewEvent;
use actors::workers::dispatcher::Dispatcher;
use futures::future::BoxFuture;
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(10);

fn manual(s: &mut scriptd::Settings) {
    // The worker's timer and LISTEN wake-up off: rows stay PENDING until poll_once.
    s.outbox.autorun = false;
    s.outbox.dev_delay_min_ms = 0;
    s.outbox.dev_delay_max_ms = 0;
}

async fn post_command(app: &TestApp, tenant: &str, body: Value) -> Value {
    let req = app.as_tenant(Method::POST, "/commands", tenant).json(&body);
    send_json(req, 202).await
}

/// Posts an `upsert_and_link` command of the default tenant; its correlation id.
async fn command_cid(app: &TestApp) -> String {
    str_of(&post_command(app, TENANT, upsert_and_link()).await["correlationId"])
}

/// A successful test event of `tenant` without a correlation id.
fn test_event(tenant: &str, name: &str, payload: Value) -> NewEvent {
    NewEvent {
        tenant_id: tenant.into(),
        name: name.into(),
        correlation_id: None,
        success: true,
        payload,
    }
}

/// Appends `batch` through the app's publisher; the new ids.
async fn publish_batch(state: &scriptd::http::state::State, batch: &[NewEvent]) -> Vec<i64> {
    state.services.events.publish(batch).await.unwrap()
}

/// The hub's live sessions per tenant.
async fn session_counts(app: &TestApp) -> std::collections::HashMap<String, usize> {
    app.state.services.events.session_counts().await.unwrap()
}

fn upsert_and_link() -> Value {
    json!({ "command": "Contacts.UpsertAndLink.v1", "actor": { "userId": "u_1" },
            "context": { "applicationId": "app_1" }, "payload": { "contacts": [] } })
}

async fn publish(app: &TestApp, tenant: &str, n: usize, correlation: Option<&str>) -> Vec<i64> {
    let mut ids = Vec::new();
    for i in 0..n {
        let mut ev = test_event(tenant, "Test.Event.v1", json!({ "i": i }));
        ev.correlation_id = correlation.map(str::to_string);
        ids.extend(publish_batch(&app.state, &[ev]).await);
    }
    ids
}

#[actix_web::test]
async fn a_command_completes_on_the_stream_of_its_correlation_id() {
    let app = spawn_app_with(manual).await;
    let cid = uuid::Uuid::now_v7().to_string();
    let mut body = upsert_and_link();
    body["correlationId"] = json!(cid);
    let mut stream = app.sse(TENANT, &format!("&correlationId={cid}")).await;

    let res = send(app.req(Method::POST, "/commands").json(&body)).await;
    assert_eq!(
        res.headers()["location"],
        format!("/commands/{cid}").as_str()
    );
    let accepted = json_of(res, 202).await;
    assert_eq!(accepted["correlationId"], cid.as_str());
    assert_eq!(accepted["status"], "PENDING");

    let db = app.db().await;
    let row = db
        .query_one("SELECT status, attempts, actor_user_id, created_by_id FROM command_outbox WHERE correlation_id = $1",
            &[&uuid::Uuid::parse_str(&cid).unwrap()])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "PENDING");
    assert_eq!(row.get::<_, i32>(1), 0);
    assert_eq!(row.get::<_, String>(2), "u_1");
    assert_eq!(row.get::<_, String>(3), "alice");
    let view = app.get_json(&format!("/commands/{cid}"), 200).await;
    assert_eq!(
        (view["status"].clone(), view["result"].clone()),
        (json!("PENDING"), Value::Null)
    );

    assert_eq!(app.outbox().poll_once().await.unwrap(), 1);

    let ev = stream.next(WAIT).await.unwrap();
    assert_eq!(ev.event, "Contacts.Upserted.v1");
    assert!(ev.id() > 0);
    let data = ev.json();
    assert_eq!(data["event"], "Contacts.Upserted.v1");
    assert_eq!(data["correlationId"], cid.as_str());
    assert_eq!(data["success"], true);
    assert_eq!(data["tenantId"], TENANT);
    assert_eq!(
        data["payload"],
        json!({ "contacts": [{ "role": "applicant", "contactId": "cnt_1" }] })
    );
    assert!(data["occurredAt"].as_str().unwrap().ends_with('Z'));

    let view = app.get_json(&format!("/commands/{cid}"), 200).await;
    assert_eq!(view["status"], "COMPLETED");
    assert_eq!(view["attempts"], 1);
    assert_eq!(view["command"], "Contacts.UpsertAndLink.v1");
    assert_eq!(view["commandId"], accepted["commandId"]);
    assert_eq!(view["result"], data);
}

#[actix_web::test]
async fn other_commands_complete_generically_and_ids_are_generated() {
    let app = spawn_app_with(manual).await;
    let mut stream = app.sse(TENANT, "").await;
    let accepted = post_command(
        &app,
        TENANT,
        json!({ "command": "Billing.Charge.v2", "actor": { "userId": "u" } }),
    )
    .await;
    let cid = accepted["correlationId"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(cid).unwrap().get_version_num(), 7);
    app.outbox().poll_once().await.unwrap();
    let ev = stream.next(WAIT).await.unwrap();
    assert_eq!(ev.event, "Command.Completed.v1");
    assert_eq!(
        ev.json()["payload"],
        json!({ "command": "Billing.Charge.v2" })
    );
    assert_eq!(ev.json()["correlationId"], cid);
}

#[actix_web::test]
async fn invalid_envelopes_answer_400_with_fields() {
    let app = spawn_app_with(manual).await;
    let all_bad = json!({ "command": "lower.case", "correlationId": "nope", "actor": { "userId": "" },
                          "context": [], "payload": "x" });
    let body = app.post_invalid("/commands", &all_bad).await;
    let f = fields(&body);
    for expected in ["command", "correlationId", "context", "payload"] {
        assert!(f.contains(&expected.to_string()), "{f:?}");
    }
    assert!(f.iter().any(|x| x.starts_with("actor")), "{f:?}");
    app.post_invalid("/commands", &json!({ "command": "A.B.v1" }))
        .await;
    let unversioned = json!({ "command": "A.v1", "actor": { "userId": "u" } });
    app.post_invalid("/commands", &unversioned).await;
    app.get_invalid("/commands/not-a-uuid").await;
    let unknown = format!("/commands/{}", uuid::Uuid::now_v7());
    app.get_err(&unknown, 404, "NOT_FOUND").await;

    let mut body = upsert_and_link();
    let cid = uuid::Uuid::now_v7().to_string();
    body["correlationId"] = json!(cid);
    post_command(&app, TENANT, body.clone()).await;
    app.post_err("/commands", &body, 409, "CORRELATION_ID_TAKEN")
        .await;
    // unique per tenant: another tenant may use it
    post_command(&app, "other", body).await;
    // the other tenant's command is not visible here
    let view = app.get_json(&format!("/commands/{cid}"), 200).await;
    assert_eq!(view["status"], "PENDING");
}

#[actix_web::test]
async fn streams_are_isolated_by_tenant_and_filtered_by_correlation() {
    let app = spawn_app_with(manual).await;
    let mut other = app.sse("other", "").await;
    let mut one = app.sse(TENANT, "&correlationId=c-1").await;
    let mut all = app.sse(TENANT, "").await;
    publish(&app, TENANT, 1, Some("c-2")).await;
    publish(&app, TENANT, 1, Some("c-1")).await;
    publish(&app, "other", 1, Some("c-1")).await;
    let a1 = all.next(WAIT).await.unwrap();
    let a2 = all.next(WAIT).await.unwrap();
    assert_eq!(
        (
            a1.json()["correlationId"].clone(),
            a2.json()["correlationId"].clone()
        ),
        (json!("c-2"), json!("c-1"))
    );
    let o = one.next(WAIT).await.unwrap();
    assert_eq!(o.json()["correlationId"], "c-1");
    assert_eq!(o.json()["tenantId"], TENANT);
    let x = other.next(WAIT).await.unwrap();
    assert_eq!(x.json()["tenantId"], "other");
    one.expect_silence(Duration::from_millis(300)).await;
    other.expect_silence(Duration::from_millis(100)).await;
}

#[actix_web::test]
async fn the_stream_needs_a_token_and_a_tenant_and_accepts_them_in_the_query() {
    let app = spawn_app_with(manual).await;
    let refusals = [
        (app.stream_req("tenantId=t1"), 401, "UNAUTHORIZED"),
        (
            app.raw(Method::GET, "/events/stream").bearer_auth(TOKEN),
            400,
            "TENANT_REQUIRED",
        ),
        (
            app.stream_req("tenantId=t1&lastEventId=abc")
                .bearer_auth(TOKEN),
            400,
            "VALIDATION_FAILED",
        ),
    ];
    for (req, status, code) in refusals {
        send_err(req, status, code).await;
    }
    // EventSource style: everything in the query.
    let mut s = SseClient::connect(app.stream_req("tenantId=t1&access_token=alice.x")).await;
    publish(&app, TENANT, 1, None).await;
    assert_eq!(s.next(WAIT).await.unwrap().json()["tenantId"], TENANT);
}

#[actix_web::test]
async fn ping_arrives_every_keepalive() {
    let app = spawn_app_with(|s| {
        manual(s);
        s.events.keepalive_secs = 1;
    })
    .await;
    let mut s = app.sse(TENANT, "").await;
    let ping = s.next_any(Duration::from_secs(5)).await.unwrap();
    assert_eq!(ping.event, "ping");
    assert!(ping.id.is_none());
    assert!(ping.json()["occurredAt"].is_string());
    assert_eq!(
        s.next_any(Duration::from_secs(5)).await.unwrap().event,
        "ping"
    );
}

#[actix_web::test]
async fn last_event_id_replays_then_continues_live_without_gap_or_duplicate() {
    let app = spawn_app_with(manual).await;
    let before = publish(&app, TENANT, 6, None).await;
    publish(&app, "other", 3, None).await;
    let after = before[1];
    // Events keep arriving while the client reconnects.
    let producer = {
        let state = app.state.clone();
        actix_web::rt::spawn(async move {
            for i in 0..30 {
                let ev = test_event(TENANT, "Test.Live.v1", json!({ "live": i }));
                publish_batch(&state, &[ev]).await;
            }
        })
    };
    let req = app.stream_req("tenantId=t1").bearer_auth(TOKEN);
    let mut s = SseClient::connect(req.header("Last-Event-ID", after.to_string())).await;
    producer.await.unwrap();
    let db = app.db().await;
    let expected: Vec<i64> = db
        .query(
            "SELECT id FROM events WHERE tenant_id = $1 AND id > $2 ORDER BY id",
            &[&TENANT, &after],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(expected.len(), 4 + 30);
    let mut got = Vec::new();
    while got.len() < expected.len() {
        got.push(s.next(WAIT).await.unwrap().id());
    }
    assert_eq!(got, expected);
    s.expect_silence(Duration::from_millis(200)).await;
}

#[actix_web::test]
async fn a_last_event_id_outside_the_history_gets_reset() {
    let app = spawn_app_with(manual).await;
    let ids = publish(&app, TENANT, 3, None).await;
    // Newer than the newest event.
    let mut s = app
        .sse_query(&format!("tenantId=t1&lastEventId={}", ids[2] + 100))
        .await;
    let reset = s.next(WAIT).await.unwrap();
    assert_eq!(reset.event, "reset");
    assert!(reset.id.is_none());
    let live = publish(&app, TENANT, 1, None).await;
    // Live from the hub's position on: events the hub had not routed yet when
    // the client connected may come first, in order.
    let mut last = 0;
    while last != live[0] {
        let id = s.next(WAIT).await.unwrap().id();
        assert!(id > last && id <= live[0], "{id} after {last}");
        last = id;
    }

    // Older than retention: purge everything, then ask from the start.
    let db = app.db().await;
    db.execute(
        "UPDATE events SET occurred_at = now() - interval '48 hours'",
        &[],
    )
    .await
    .unwrap();
    let purged = app.state.services.events.purge().await.unwrap();
    assert_eq!(purged, 4);
    let mut s = app.sse_query("tenantId=t1&lastEventId=1").await;
    assert_eq!(s.next(WAIT).await.unwrap().event, "reset");
}

#[actix_web::test]
async fn two_processes_share_commands_and_events_each_command_once() {
    let fast = |s: &mut scriptd::Settings| {
        s.outbox.dev_delay_min_ms = 0;
        s.outbox.dev_delay_max_ms = 0;
        s.outbox.poll_interval_ms = 50;
    };
    let a = spawn_app_with(fast).await;
    let b = spawn_app_on(&a.db_url, fast).await;
    let mut on_b = b.sse(TENANT, "").await;
    let mut cids = Vec::new();
    for _ in 0..20 {
        cids.push(command_cid(&a).await);
    }
    let mut seen = Vec::new();
    while seen.len() < 20 {
        seen.push(str_of(
            &on_b.next(WAIT).await.unwrap().json()["correlationId"],
        ));
    }
    seen.sort();
    cids.sort();
    assert_eq!(seen, cids);
    on_b.expect_silence(Duration::from_millis(300)).await;
    let db = a.db().await;
    let row = db
        .query_one("SELECT count(*) FILTER (WHERE status = 'COMPLETED'), max(attempts), (SELECT count(*) FROM events) FROM command_outbox", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 20);
    assert_eq!(row.get::<_, i32>(1), 1);
    assert_eq!(row.get::<_, i64>(2), 20);
}

#[actix_web::test]
async fn notify_wakes_the_outbox_long_before_the_poll_interval() {
    let app = spawn_app_with(|s| {
        s.outbox.dev_delay_min_ms = 0;
        s.outbox.dev_delay_max_ms = 0;
        s.outbox.poll_interval_ms = 600_000;
    })
    .await;
    let mut s = app.sse(TENANT, "").await;
    // The polls at start (the actor's first, the listener's after it connects)
    // find nothing; the command then wakes the outbox by NOTIFY.
    let outbox = app.outbox().clone();
    eventually(WAIT, || async { (outbox.polls() >= 2).then_some(()) }).await;
    let cid = post_command(&app, TENANT, upsert_and_link()).await["correlationId"].clone();
    let ev = s.next(WAIT).await.unwrap();
    assert_eq!(ev.json()["correlationId"], cid);
}

#[actix_web::test]
async fn an_expired_lease_is_completed_by_another_process() {
    let app = spawn_app_with(manual).await;
    let cid = command_cid(&app).await;
    // A process claimed it and died: PROCESSING with a lease in the past.
    let db = app.db().await;
    db.execute(
        "UPDATE command_outbox SET status = 'PROCESSING', attempts = 1, lease_until = now() - interval '1 second'",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(app.outbox().poll_once().await.unwrap(), 1);
    let view = app.get_json(&format!("/commands/{cid}"), 200).await;
    assert_eq!(view["status"], "COMPLETED");
    assert_eq!(view["attempts"], 2);
    // A live lease is left alone.
    let cid2 = command_cid(&app).await;
    db.execute(
        "UPDATE command_outbox SET status = 'PROCESSING', attempts = 1, lease_until = now() + interval '1 hour' WHERE correlation_id = $1",
        &[&uuid::Uuid::parse_str(&cid2).unwrap()],
    )
    .await
    .unwrap();
    assert_eq!(app.outbox().poll_once().await.unwrap(), 0);
}

struct Failing(AtomicU32);

impl Dispatcher for Failing {
    fn dispatch(&self, _: &Command) -> BoxFuture<'static, Result<Completion, String>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Err("downstream said no".to_string()) })
    }
}

#[actix_web::test]
async fn failures_retry_with_backoff_then_end_failed_with_an_event() {
    let failing = Arc::new(Failing(AtomicU32::new(0)));
    let app = spawn_app_with_dispatcher(Some(failing.clone()), |s| {
        s.outbox.autorun = false;
        s.outbox.max_attempts = 3;
        s.outbox.backoff_base_ms = 1;
        s.outbox.backoff_max_ms = 2;
    })
    .await;
    let mut stream = app.sse(TENANT, "").await;
    let cid = command_cid(&app).await;
    app.outbox().poll_once().await.unwrap();
    let view = app.get_json(&format!("/commands/{cid}"), 200).await;
    assert_eq!(
        (view["status"].clone(), view["attempts"].clone()),
        (json!("PENDING"), json!(1))
    );
    let db = app.db().await;
    let next: bool = db
        .query_one("SELECT next_attempt_at > created_at AND last_error = 'downstream said no' FROM command_outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert!(next, "retry scheduled later with the error kept");
    eventually(WAIT, || async {
        app.outbox().poll_once().await.unwrap();
        let v = app.get_json(&format!("/commands/{cid}"), 200).await;
        (v["status"] == "FAILED").then_some(())
    })
    .await;
    assert_eq!(failing.0.load(Ordering::SeqCst), 3);
    let ev = stream.next(WAIT).await.unwrap();
    assert_eq!(ev.event, "Command.Failed.v1");
    assert_eq!(ev.json()["success"], false);
    assert_eq!(
        ev.json()["payload"],
        json!({ "command": "Contacts.UpsertAndLink.v1", "error": "downstream said no" })
    );
    let view = app.get_json(&format!("/commands/{cid}"), 200).await;
    assert_eq!(view["attempts"], 3);
    assert_eq!(view["result"]["event"], "Command.Failed.v1");
}

#[actix_web::test]
async fn a_slow_reader_is_cut_off_while_a_fast_one_keeps_up() {
    let app = spawn_app_with(|s| {
        manual(s);
        s.events.session_buffer = 64;
    })
    .await;
    // The slow reader connects and never reads.
    let slow = send(app.stream_req("tenantId=t1").bearer_auth(TOKEN)).await;
    let mut fast = app.sse(TENANT, "").await;
    // ~19 MB in batches of 20 events: far more than the slow reader's socket
    // buffers, its 16 frames in flight and its 64 buffered events can hold.
    // Each batch is published once the fast reader has the previous one, so
    // it is never more than one batch (< its buffer) behind.
    let blob = "x".repeat(16 * 1024);
    let (batches, per_batch) = (60, 20);
    let mut last = 0;
    for b in 0..batches {
        let batch: Vec<NewEvent> = (0..per_batch)
            .map(|i| {
                let payload = json!({ "i": b * per_batch + i, "blob": blob });
                test_event(TENANT, "Test.Big.v1", payload)
            })
            .collect();
        publish_batch(&app.state, &batch).await;
        for _ in 0..per_batch {
            let ev = fast.next(WAIT).await.expect("the fast reader was cut off");
            assert!(ev.id() > last);
            last = ev.id();
        }
    }
    assert!(
        app.state
            .services
            .events
            .stats()
            .dropped_slow
            .load(Ordering::Relaxed)
            >= 1
    );
    // The slow stream ends: its body finishes instead of hanging.
    let body = tokio::time::timeout(WAIT, slow.bytes())
        .await
        .expect("the slow stream was not closed");
    assert!(body.is_ok());
}

#[actix_web::test]
async fn closed_sessions_are_removed() {
    let app = spawn_app_with(manual).await;
    let s = app.sse(TENANT, "").await;
    let counts = session_counts(&app).await;
    assert_eq!(counts.get(TENANT), Some(&1));
    drop(s);
    // The server notices at its next write: publish, then the session is gone.
    eventually(WAIT, || async {
        publish(&app, TENANT, 1, None).await;
        let counts = session_counts(&app).await;
        (!counts.contains_key(TENANT)).then_some(())
    })
    .await;
}

#[actix_web::test]
async fn shutdown_closes_open_streams() {
    let app = spawn_app_with(manual).await;
    let mut s = app.sse(TENANT, "").await;
    let started = std::time::Instant::now();
    app.stopper.stop().await;
    assert!(s.next(WAIT).await.is_none(), "the stream should end");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
