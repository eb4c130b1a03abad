//! The runner stream: `GET /runs/:runId/stream` over a real WebSocket.

use std::collections::HashMap;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(15);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the server sent: a JSON text frame, or the close (code, reason).
#[derive(Debug)]
enum Got {
    Frame(Value),
    Closed(Option<(u16, String)>),
}

fn ws_url(address: &str, path: &str) -> String {
    format!("{}{path}", address.replacen("http://", "ws://", 1))
}

/// Opens the run's stream with the default token and tenant headers.
async fn open(address: &str, run: &str) -> Ws {
    open_as(address, run, TENANT).await
}

async fn open_as(address: &str, run: &str, tenant: &str) -> Ws {
    let mut req = ws_url(address, &format!("/runs/{run}/stream"))
        .into_client_request()
        .unwrap();
    let h = req.headers_mut();
    h.insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    h.insert("x-tenant-id", tenant.parse().unwrap());
    let (ws, res) = tokio_tungstenite::connect_async(req)
        .await
        .expect("the upgrade");
    assert_eq!(res.status().as_u16(), 101);
    ws
}

fn vars_frame(seq: i64, items: Value) -> Message {
    Message::text(json!({ "type": "vars", "seq": seq, "vars": items }).to_string())
}

/// Frame `seq` of the usual pattern: key `k<seq % keys>` set to `seq`.
fn counter_frame(seq: i64, keys: i64) -> Message {
    vars_frame(
        seq,
        json!([{ "key": format!("k{}", seq % keys), "numVal": seq }]),
    )
}

/// The next thing the server sends (pings are answered by the client and
/// skipped), within `WAIT`.
async fn next(ws: &mut Ws) -> Got {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("the server answers in time");
        match msg {
            Some(Ok(Message::Text(t))) => return Got::Frame(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(c))) => {
                return Got::Closed(c.map(|c| (u16::from(c.code), c.reason.to_string())))
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => panic!("unexpected message {other:?}"),
            Some(Err(_)) | None => return Got::Closed(None),
        }
    }
}

async fn frame(ws: &mut Ws) -> Value {
    match next(ws).await {
        Got::Frame(v) => v,
        Got::Closed(c) => panic!("expected a frame, the stream closed: {c:?}"),
    }
}

/// The close code, after every frame the server still sends.
async fn closed(ws: &mut Ws) -> (Vec<Value>, Option<u16>) {
    let mut frames = Vec::new();
    loop {
        match next(ws).await {
            Got::Frame(v) => frames.push(v),
            Got::Closed(c) => return (frames, c.map(|c| c.0)),
        }
    }
}

fn ack(seq: i64, upserted: i64) -> Value {
    json!({ "type": "ack", "seq": seq, "upserted": upserted })
}

fn dup(seq: i64) -> Value {
    json!({ "type": "ack", "seq": seq, "upserted": 0, "duplicate": true })
}

async fn run_json(app: &TestApp, run: &str) -> Value {
    app.get_json(&format!("/runs/{run}"), 200).await
}

fn values(run: &Value) -> HashMap<String, f64> {
    run["vars"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (str_of(&v["key"]), v["numVal"].as_f64().unwrap()))
        .collect()
}

async fn new_run(app: &TestApp, slug: &str) -> String {
    let script = published_script(app, slug).await;
    start_run(app, &script).await
}

#[actix_web::test]
async fn a_thousand_pipelined_frames_are_acked_in_order_and_resends_are_flagged() {
    let app = spawn_app().await;
    let run = new_run(&app, "st-1").await;
    let mut ws = open(&app.address, &run).await;
    for seq in 1..=1000 {
        ws.feed(counter_frame(seq, 50)).await.unwrap();
    }
    ws.flush().await.unwrap();
    for seq in 1..=1000 {
        assert_eq!(frame(&mut ws).await, ack(seq, 1));
    }
    let got = run_json(&app, &run).await;
    assert_eq!(got["streamSeq"], 1000);
    let expected: HashMap<String, f64> = (951..=1000)
        .map(|s| (format!("k{}", s % 50), s as f64))
        .collect();
    assert_eq!(values(&got), expected);

    // A reconnecting runner resends: acked as duplicates, nothing written.
    drop(ws);
    let mut ws = open(&app.address, &run).await;
    for seq in 990..=1000 {
        ws.send(vars_frame(seq, json!([{ "key": "resent", "numVal": 1 }])))
            .await
            .unwrap();
    }
    for seq in 990..=1000 {
        assert_eq!(frame(&mut ws).await, dup(seq));
    }
    // The stream goes on after the resends.
    ws.send(counter_frame(1001, 50)).await.unwrap();
    assert_eq!(frame(&mut ws).await, ack(1001, 1));
    ws.close(None).await.unwrap();
    let (rest, code) = closed(&mut ws).await;
    assert_eq!((rest, code), (vec![], Some(1000)));
    let got = run_json(&app, &run).await;
    assert_eq!(got["streamSeq"], 1001);
    assert_eq!(values(&got).len(), 50, "no key of a resend was written");
    let db = app.db().await;
    let rows = db
        .query_one(
            "SELECT count(*) FROM run_variables WHERE run_id = $1::text::uuid",
            &[&run],
        )
        .await
        .unwrap();
    assert_eq!(rows.get::<_, i64>(0), 50);
    eventually(WAIT, || async {
        (app.state.run_streams.open_count() == 0).then_some(())
    })
    .await;
    let metrics = app.admin_get("/metrics").await.text().await.unwrap();
    for line in [
        "scriptd_run_stream_frames{outcome=\"acked\"} 1001",
        "scriptd_run_stream_frames{outcome=\"duplicate\"} 11",
        "scriptd_run_stream_frames{outcome=\"refused\"} 0",
        "scriptd_run_streams_open 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
}

#[actix_web::test]
async fn every_bad_frame_gets_its_error_and_the_stream_stays_open() {
    let app = spawn_app().await;
    let run = new_run(&app, "st-2").await;
    let mut ws = open(&app.address, &run).await;
    let many: Vec<Value> = (0..501)
        .map(|i| json!({ "key": format!("m{i}"), "numVal": i }))
        .collect();
    let cases: Vec<(String, Value, &str, &str)> = vec![
        ("{nope".into(), Value::Null, "MALFORMED_JSON", ""),
        ("[1,2]".into(), Value::Null, "VALIDATION_FAILED", "frame"),
        (
            r#"{"seq":1,"vars":[]}"#.into(),
            json!(1),
            "VALIDATION_FAILED",
            "type",
        ),
        (
            r#"{"type":"jump","seq":1}"#.into(),
            json!(1),
            "VALIDATION_FAILED",
            "type",
        ),
        (
            r#"{"type":"vars","vars":[]}"#.into(),
            Value::Null,
            "VALIDATION_FAILED",
            "seq",
        ),
        (
            r#"{"type":"vars","seq":0,"vars":[]}"#.into(),
            Value::Null,
            "VALIDATION_FAILED",
            "seq",
        ),
        (
            r#"{"type":"vars","seq":-3,"vars":[]}"#.into(),
            Value::Null,
            "VALIDATION_FAILED",
            "seq",
        ),
        (
            r#"{"type":"vars","seq":1.5,"vars":[]}"#.into(),
            Value::Null,
            "VALIDATION_FAILED",
            "seq",
        ),
        (
            r#"{"type":"vars","seq":"1","vars":[]}"#.into(),
            Value::Null,
            "VALIDATION_FAILED",
            "seq",
        ),
        (
            r#"{"type":"vars","seq":1}"#.into(),
            json!(1),
            "VALIDATION_FAILED",
            "frame",
        ),
        (
            r#"{"type":"vars","seq":1,"vars":[]}"#.into(),
            json!(1),
            "VALIDATION_FAILED",
            "body",
        ),
        (
            json!({"type":"vars","seq":1,"vars":many}).to_string(),
            json!(1),
            "VALIDATION_FAILED",
            "body",
        ),
        (
            r#"{"type":"vars","seq":1,"vars":[{"key":"bad key","numVal":1}]}"#.into(),
            json!(1),
            "VALIDATION_FAILED",
            "[0].key",
        ),
        (
            r#"{"type":"vars","seq":1,"vars":[{"key":"a","numVal":1,"strVal":"x"}]}"#.into(),
            json!(1),
            "VALIDATION_FAILED",
            "[0]",
        ),
        (
            r#"{"type":"vars","seq":1,"vars":[{"key":"a"}]}"#.into(),
            json!(1),
            "VALIDATION_FAILED",
            "[0]",
        ),
        (
            r#"{"type":"vars","seq":1,"vars":[{"key":"a","numVal":1}],"x":1}"#.into(),
            json!(1),
            "VALIDATION_FAILED",
            "x",
        ),
        (
            r#"{"type":"finish","seq":1,"status":"RUNNING"}"#.into(),
            json!(1),
            "VALIDATION_FAILED",
            "status",
        ),
        (
            r#"{"type":"finish","seq":1,"status":"DONE"}"#.into(),
            json!(1),
            "VALIDATION_FAILED",
            "status",
        ),
    ];
    for (text, _, _, _) in &cases {
        ws.send(Message::text(text.clone())).await.unwrap();
    }
    for (text, seq, code, field) in &cases {
        let got = frame(&mut ws).await;
        assert_eq!(got["type"], "error", "{text}: {got}");
        assert_eq!(
            (&got["seq"], got["code"].as_str()),
            (seq, Some(*code)),
            "{text}: {got}"
        );
        assert!(got["message"].as_str().is_some_and(|m| !m.is_empty()));
        if !field.is_empty() {
            let fields = fields(&got);
            assert!(
                fields.iter().any(|f| f.starts_with(field)),
                "{text}: {field} not in {fields:?}"
            );
        }
    }
    // Refused frames wrote nothing, so seq 1 is still free.
    ws.send(counter_frame(1, 10)).await.unwrap();
    assert_eq!(frame(&mut ws).await, ack(1, 1));
    ws.send(counter_frame(5, 10)).await.unwrap();
    assert_eq!(frame(&mut ws).await, ack(5, 1));
    // A seq that does not grow within the connection and is not committed.
    ws.send(counter_frame(3, 10)).await.unwrap();
    let got = frame(&mut ws).await;
    assert_eq!(
        (&got["seq"], &got["code"]),
        (&json!(3), &json!("VALIDATION_FAILED"))
    );
    assert_eq!(fields(&got), vec!["seq"]);
    // Still open, and nothing refused was written.
    ws.send(counter_frame(6, 10)).await.unwrap();
    assert_eq!(frame(&mut ws).await, ack(6, 1));
    let got = run_json(&app, &run).await;
    assert_eq!(got["streamSeq"], 6);
    let expected: HashMap<String, f64> = [
        ("k1".to_string(), 1.0),
        ("k5".into(), 5.0),
        ("k6".into(), 6.0),
    ]
    .into();
    assert_eq!(values(&got), expected);

    // A binary frame closes with 1003.
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let (rest, code) = closed(&mut ws).await;
    assert_eq!((rest, code), (vec![], Some(1003)));
}

#[actix_web::test]
async fn a_frame_over_the_byte_limit_closes_with_1009() {
    let app = spawn_app_with(|s| s.limits.vars_body_bytes = 4096).await;
    let run = new_run(&app, "st-3").await;
    let mut ws = open(&app.address, &run).await;
    ws.send(counter_frame(1, 10)).await.unwrap();
    assert_eq!(frame(&mut ws).await, ack(1, 1));
    let big = "x".repeat(5000);
    ws.send(vars_frame(2, json!([{ "key": "big", "strVal": big }])))
        .await
        .unwrap();
    let (frames, code) = closed(&mut ws).await;
    assert_eq!((frames, code), (vec![], Some(1009)));
    let got = run_json(&app, &run).await;
    assert_eq!(got["streamSeq"], 1);
    assert_eq!(values(&got).len(), 1);
}

/// What a refused upgrade answers: status and error code.
async fn refused_upgrade(req: reqwest::RequestBuilder, status: u16, code: &str) {
    let req = req
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    send_err(req, status, code).await;
}

#[actix_web::test]
async fn upgrades_are_refused_before_the_switch_with_the_contract_errors() {
    let app = spawn_app().await;
    let run = new_run(&app, "st-4").await;
    let path = format!("/runs/{run}/stream");
    refused_upgrade(app.raw(Method::GET, &path), 401, "UNAUTHORIZED").await;
    let forged = app.raw(Method::GET, &path).bearer_auth(" ");
    refused_upgrade(forged.header("x-tenant-id", TENANT), 401, "UNAUTHORIZED").await;
    refused_upgrade(app.as_tenant(Method::GET, &path, "t2"), 404, "NOT_FOUND").await;
    let unknown = format!("/runs/{}/stream", uuid::Uuid::now_v7());
    refused_upgrade(app.req(Method::GET, &unknown), 404, "NOT_FOUND").await;
    refused_upgrade(
        app.req(Method::GET, "/runs/nope/stream"),
        400,
        "VALIDATION_FAILED",
    )
    .await;
    let untenanted = app.raw(Method::GET, &path).bearer_auth(TOKEN);
    refused_upgrade(untenanted, 400, "TENANT_REQUIRED").await;
    // Not a WebSocket upgrade at all.
    send_err(app.req(Method::GET, &path), 400, "VALIDATION_FAILED").await;
    // The query form (for clients that cannot set headers) opens it.
    let url = ws_url(
        &app.address,
        &format!("/runs/{run}/stream?tenantId={TENANT}&access_token={TOKEN}"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(counter_frame(1, 10)).await.unwrap();
    assert_eq!(frame(&mut ws).await, ack(1, 1));
    drop(ws);
    // A finished run: 409.
    json_of(finish(&app, &run, "SUCCEEDED").await, 200).await;
    refused_upgrade(app.req(Method::GET, &path), 409, "RUN_FINISHED").await;
}

#[actix_web::test]
async fn finish_over_the_stream_ends_it_and_later_frames_are_refused() {
    let app = spawn_app().await;
    let run = new_run(&app, "st-5").await;
    let mut sse = app.sse(TENANT, &format!("&correlationId={run}")).await;
    let mut ws = open(&app.address, &run).await;
    // One frame at a time: each commits alone, one event each.
    for seq in 1..=3 {
        ws.send(counter_frame(seq, 10)).await.unwrap();
        assert_eq!(frame(&mut ws).await, ack(seq, 1));
    }
    ws.send(counter_frame(3, 10)).await.unwrap();
    let got = frame(&mut ws).await;
    assert_eq!(got["code"], "VALIDATION_FAILED", "{got}");
    let finish = json!({ "type": "finish", "seq": 7, "status": "SUCCEEDED" });
    ws.send(Message::text(finish.to_string())).await.unwrap();
    ws.send(counter_frame(8, 10)).await.unwrap();
    let (frames, code) = closed(&mut ws).await;
    assert_eq!(code, Some(1000));
    assert_eq!(frames[0]["type"], "finished", "{frames:?}");
    assert_eq!(frames[0]["seq"], 7);
    assert_eq!(frames[0]["run"]["status"], "SUCCEEDED");
    assert_eq!(frames[0]["run"]["streamSeq"], 7);
    // Frame 8 was refused (or never read before the close): never written.
    assert!(frames.len() <= 2, "{frames:?}");
    if let Some(late) = frames.get(1) {
        assert_eq!(
            (&late["seq"], &late["code"]),
            (&json!(8), &json!("RUN_FINISHED"))
        );
    }
    let got = run_json(&app, &run).await;
    assert_eq!(
        (got["status"].clone(), got["streamSeq"].clone()),
        (json!("SUCCEEDED"), json!(7))
    );
    assert!(!values(&got).contains_key("k8"));
    // The run's events on SSE: one per committed frame, then the finish
    // (after its start, which committed as the SSE session opened: the hub
    // may deliver it or not).
    let mut names = Vec::new();
    while names.len() < 4 {
        let ev = sse.next(WAIT).await.expect("an event");
        if names.is_empty() && ev.event == "Run.Started.v1" {
            continue;
        }
        names.push((ev.event.clone(), ev.json()["payload"]["keys"].clone()));
    }
    assert_eq!(
        names,
        vec![
            ("Run.VarsUpserted.v1".to_string(), json!(["k1"])),
            ("Run.VarsUpserted.v1".to_string(), json!(["k2"])),
            ("Run.VarsUpserted.v1".to_string(), json!(["k3"])),
            ("Run.Finished.v1".to_string(), Value::Null),
        ]
    );
    sse.expect_silence(Duration::from_millis(500)).await;
    refused_upgrade(
        app.req(Method::GET, &format!("/runs/{run}/stream")),
        409,
        "RUN_FINISHED",
    )
    .await;
}

#[actix_web::test]
async fn stream_frames_and_http_upserts_on_one_run_are_serialized_by_its_actor() {
    let app = spawn_app().await;
    let run = new_run(&app, "st-6").await;
    let mut ws = open(&app.address, &run).await;
    for round in 1..=20i64 {
        let items =
            json!([{ "key": "shared", "numVal": round * 2 }, { "key": "ws", "numVal": round }]);
        ws.send(vars_frame(round, items)).await.unwrap();
        assert_eq!(frame(&mut ws).await, ack(round, 2));
        let http = json!([{ "key": "shared", "numVal": round * 2 + 1 }, { "key": "http", "numVal": round }]);
        let res = upsert(&app, &run, http).await;
        assert_eq!(json_of(res, 200).await["upserted"], 2);
    }
    let got = run_json(&app, &run).await;
    assert_eq!(got["streamSeq"], 20);
    let v = values(&got);
    assert_eq!((v["ws"], v["http"], v["shared"]), (20.0, 20.0, 41.0));
    // HTTP finish while the stream is open: the next frame is refused and the
    // stream ends.
    json_of(finish(&app, &run, "FAILED").await, 200).await;
    ws.send(counter_frame(21, 10)).await.unwrap();
    let (frames, code) = closed(&mut ws).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(
        (&frames[0]["seq"], &frames[0]["code"]),
        (&json!(21), &json!("RUN_FINISHED"))
    );
    assert_eq!(code, Some(1000));
}

#[actix_web::test]
async fn a_newer_stream_replaces_the_older_one_which_gets_its_acks_and_1008() {
    let app = spawn_app().await;
    let run = new_run(&app, "st-7").await;
    let mut old = open(&app.address, &run).await;
    for seq in 1..=50 {
        old.feed(counter_frame(seq, 5)).await.unwrap();
    }
    old.flush().await.unwrap();
    assert_eq!(frame(&mut old).await, ack(1, 1));
    let mut new = open(&app.address, &run).await;
    let (frames, code) = closed(&mut old).await;
    assert_eq!(code, Some(1008));
    // Every frame the old stream sent before it was replaced is answered in
    // order (the server may have read fewer than 50 when the new one came).
    let seqs: Vec<i64> = frames.iter().map(|f| f["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (2..2 + seqs.len() as i64).collect::<Vec<_>>());
    assert!(frames
        .iter()
        .all(|f| f["type"] == "ack" && f.get("duplicate").is_none()));
    // The runner resends from its last ack; what committed is a duplicate.
    let acked = 1 + frames.len() as i64;
    for seq in 2..=50 {
        new.feed(counter_frame(seq, 5)).await.unwrap();
    }
    new.flush().await.unwrap();
    for seq in 2..=50 {
        let want = if seq <= acked { dup(seq) } else { ack(seq, 1) };
        assert_eq!(frame(&mut new).await, want);
    }
    let got = run_json(&app, &run).await;
    assert_eq!(got["streamSeq"], 50);
    let expected: HashMap<String, f64> = (46..=50)
        .map(|s| (format!("k{}", s % 5), s as f64))
        .collect();
    assert_eq!(values(&got), expected);
    assert_eq!(app.state.run_streams.open_count(), 1);
}

/// Streams `frames` frames of 20 keys, resending what was not acked after
/// every cut; returns (acks, duplicates).
async fn stream_until_acked(
    address: &str,
    run: &str,
    frames: i64,
    acked_before: i64,
) -> (i64, i64) {
    let mut ws = open(address, run).await;
    for seq in acked_before + 1..=frames {
        ws.feed(counter_frame(seq, 20)).await.unwrap();
    }
    ws.flush().await.unwrap();
    let (mut acks, mut dups) = (0, 0);
    for seq in acked_before + 1..=frames {
        let got = frame(&mut ws).await;
        assert_eq!(got["seq"], seq, "{got}");
        if got.get("duplicate").is_some() {
            assert_eq!(got, dup(seq));
            dups += 1;
        } else {
            assert_eq!(got, ack(seq, 1));
            acks += 1;
        }
    }
    (acks, dups)
}

#[actix_web::test]
async fn scriptd_killed_mid_stream_loses_no_acknowledged_frame_and_writes_resends_once() {
    let db_url = fresh_database().await;
    let app = spawn_app_on(&db_url, |_| {}).await;
    let run = new_run(&app, "st-8").await;
    let server = ServerProcess::start(&db_url, &[]).await;
    let mut ws = open(&server.address, &run).await;
    for seq in 1..=3000 {
        ws.feed(counter_frame(seq, 20)).await.unwrap();
    }
    ws.flush().await.unwrap();
    let mut acked = 0;
    while acked < 200 {
        let got = frame(&mut ws).await;
        acked += 1;
        assert_eq!(got, ack(acked, 1));
    }
    // kill -9 with frames in flight; the runner has 200 acks.
    drop(server);
    let committed = run_json(&app, &run).await["streamSeq"].as_i64().unwrap();
    assert!(committed >= acked, "acked {acked}, committed {committed}");
    let db = app.db().await;
    let before: i64 = db
        .query_one(
            "SELECT count(*) FROM run_variables WHERE run_id = $1::text::uuid",
            &[&run],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(before, 20.min(committed));
    // The runner reconnects (here to the in-process server on the same
    // database) and resends every frame it has no ack for.
    let (acks, dups) = stream_until_acked(&app.address, &run, 3000, acked).await;
    assert_eq!(
        dups,
        committed - acked,
        "exactly the committed, unacked frames"
    );
    assert_eq!(acks, 3000 - committed);
    let got = run_json(&app, &run).await;
    assert_eq!(got["streamSeq"], 3000);
    let expected: HashMap<String, f64> = (2981..=3000)
        .map(|s| (format!("k{}", s % 20), s as f64))
        .collect();
    assert_eq!(values(&got), expected);
}

#[actix_web::test]
async fn a_cut_connection_loses_nothing_and_resends_are_written_once() {
    let app = spawn_app().await;
    let run = new_run(&app, "st-9").await;
    let mut ws = open(&app.address, &run).await;
    for seq in 1..=1000 {
        ws.feed(counter_frame(seq, 20)).await.unwrap();
    }
    ws.flush().await.unwrap();
    let mut acked = 0;
    while acked < 100 {
        acked += 1;
        assert_eq!(frame(&mut ws).await, ack(acked, 1));
    }
    // The TCP connection dies without a close frame.
    let tcp = match ws.get_ref() {
        MaybeTlsStream::Plain(s) => s,
        _ => unreachable!(),
    };
    let sock = socket2::SockRef::from(tcp);
    sock.set_linger(Some(Duration::ZERO)).unwrap();
    drop(ws);
    // Whatever the server read still commits: the stream leaves the registry
    // once every frame it took is answered.
    eventually(WAIT, || async {
        (app.state.run_streams.open_count() == 0).then_some(())
    })
    .await;
    let committed = run_json(&app, &run).await["streamSeq"].as_i64().unwrap();
    assert!(committed >= acked);
    let (acks, dups) = stream_until_acked(&app.address, &run, 1000, acked).await;
    assert_eq!((acks, dups), (1000 - committed, committed - acked));
    let got = run_json(&app, &run).await;
    assert_eq!(got["streamSeq"], 1000);
    let expected: HashMap<String, f64> = (981..=1000)
        .map(|s| (format!("k{}", s % 20), s as f64))
        .collect();
    assert_eq!(values(&got), expected);
}

#[actix_web::test]
async fn a_runner_faster_than_its_commits_is_stopped_by_backpressure_and_harms_no_one() {
    let app = spawn_app_with(|s| s.runs.stream_inflight = 8).await;
    let run = new_run(&app, "st-10").await;
    let other = start_run(&app, &published_script(&app, "st-10b").await).await;
    // The run's row locked elsewhere: its writes wait, so its acks do.
    let mut db = app.db().await;
    let lock = db.transaction().await.unwrap();
    lock.execute(
        "SELECT 1 FROM script_runs WHERE id = $1::text::uuid FOR UPDATE",
        &[&run],
    )
    .await
    .unwrap();
    let mut ws = open(&app.address, &run).await;
    // 4 KiB frames, never reading: 10,000 of them would be 40 MiB. The writes
    // stall long before: the server stops reading, the socket buffers fill.
    let pad = "p".repeat(4000);
    let mut sent = 0i64;
    loop {
        let frame = vars_frame(sent + 1, json!([{ "key": "pad", "strVal": pad }]));
        match tokio::time::timeout(Duration::from_secs(2), ws.send(frame)).await {
            Ok(Ok(())) => sent += 1,
            Ok(Err(e)) => panic!("send failed: {e}"),
            Err(_) => break,
        }
        assert!(sent < 10_000, "the server never pushed back");
    }
    assert!(sent > 8, "the server reads up to its in-flight limit");
    // Others are served meanwhile.
    let res = upsert(&app, &other, json!([{ "key": "a", "numVal": 1 }])).await;
    assert_eq!(json_of(res, 200).await["upserted"], 1);
    assert_eq!(run_json(&app, &run).await["streamSeq"], 0);
    // Released: every frame the runner managed to send commits and is acked,
    // in order, and the stalled send completes.
    lock.rollback().await.unwrap();
    let mut acked = 0;
    while acked < sent {
        acked += 1;
        assert_eq!(frame(&mut ws).await, ack(acked, 1));
    }
    // The send that stalled may or may not have left; the next one does.
    ws.send(counter_frame(sent + 2, 10)).await.unwrap();
    let mut tail = vec![frame(&mut ws).await];
    if tail[0]["seq"] == sent + 1 {
        tail.push(frame(&mut ws).await);
    }
    assert_eq!(tail.last(), Some(&ack(sent + 2, 1)), "{tail:?}");
    assert!(tail.len() == 1 || tail[0] == ack(sent + 1, 1), "{tail:?}");
    assert_eq!(run_json(&app, &run).await["streamSeq"], sent + 2);
}

#[actix_web::test]
async fn a_silent_runner_is_closed_and_an_open_stream_keeps_the_run_active() {
    let app = spawn_app_with(|s| s.runs.stream_ping_secs = 1).await;
    let run = new_run(&app, "st-11").await;
    let started = run_json(&app, &run).await["lastActivityAt"].clone();
    let mut ws = open(&app.address, &run).await;
    ws.send(counter_frame(1, 10)).await.unwrap();
    assert_eq!(frame(&mut ws).await, ack(1, 1));
    // A runner that reads answers the pings: nothing but pings for four
    // intervals, and the stream stays open.
    let quiet = tokio::time::timeout(Duration::from_secs(4), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_))) => continue,
                other => return other,
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "expected only pings, got {quiet:?}");
    let active = run_json(&app, &run).await["lastActivityAt"].clone();
    assert!(str_of(&active) > str_of(&started), "{active} > {started}");
    // A runner that stops reading stops answering pings: closed with 1008
    // after three intervals (seen once it reads again).
    eventually(WAIT, || async {
        (app.state.run_streams.open_count() == 0).then_some(())
    })
    .await;
    let (frames, code) = closed(&mut ws).await;
    assert_eq!((frames, code), (vec![], Some(1008)));
}

#[actix_web::test]
async fn shutdown_acks_what_committed_then_closes_with_1001() {
    let app = spawn_app().await;
    let run = new_run(&app, "st-12").await;
    let mut ws = open(&app.address, &run).await;
    for seq in 1..=200 {
        ws.feed(counter_frame(seq, 10)).await.unwrap();
    }
    ws.flush().await.unwrap();
    assert_eq!(frame(&mut ws).await, ack(1, 1));
    let stopper = app.stopper.clone();
    let stopping = actix_web::rt::spawn(async move { stopper.stop().await });
    let (frames, code) = closed(&mut ws).await;
    assert_eq!(code, Some(1001));
    let seqs: Vec<i64> = frames.iter().map(|f| f["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (2..2 + seqs.len() as i64).collect::<Vec<_>>());
    stopping.await.unwrap();
    let db = app.db().await;
    let committed: i64 = db
        .query_one(
            "SELECT stream_seq FROM script_runs WHERE id = $1::text::uuid",
            &[&run],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        committed,
        1 + frames.len() as i64,
        "every ack sent is committed and every commit acked"
    );
}

#[actix_web::test]
async fn after_a_refused_frame_no_later_frame_commits_until_it_is_sent_again() {
    // A queue of one: a pipelined stream overflows it at once.
    let app = spawn_app_with(|s| s.actors.run_queue_max = 1).await;
    let run = new_run(&app, "st-13").await;
    let mut ws = open(&app.address, &run).await;
    let frame_of = |seq: i64| vars_frame(seq, json!([{ "key": format!("k{seq}"), "numVal": seq }]));
    for seq in 1..=300 {
        ws.feed(frame_of(seq)).await.unwrap();
    }
    ws.flush().await.unwrap();
    let mut gap = None;
    for seq in 1..=300 {
        let got = frame(&mut ws).await;
        assert_eq!(got["seq"], seq, "{got}");
        match gap {
            None if got["type"] == "ack" => assert_eq!(got, ack(seq, 1)),
            None => {
                assert_eq!(got["code"], "UNAVAILABLE", "{got}");
                gap = Some(seq);
            }
            // Past the first refusal nothing commits.
            Some(_) => assert_eq!(got["code"], "UNAVAILABLE", "{got}"),
        }
    }
    let gap = gap.expect("the queue never filled");
    assert_eq!(run_json(&app, &run).await["streamSeq"], gap - 1);
    // The runner reconnects and resends from the refused frame: all of it
    // is written, none of it passes for a duplicate.
    drop(ws);
    let mut ws = open(&app.address, &run).await;
    for seq in gap..=300 {
        ws.send(frame_of(seq)).await.unwrap();
        assert_eq!(frame(&mut ws).await, ack(seq, 1));
    }
    let got = run_json(&app, &run).await;
    assert_eq!(got["streamSeq"], 300);
    let expected: HashMap<String, f64> = (1..=300).map(|s| (format!("k{s}"), s as f64)).collect();
    assert_eq!(values(&got), expected);
}

#[actix_web::test]
async fn the_runner_client_rides_out_a_kill_9_and_every_update_lands_once() {
    let db_url = fresh_database().await;
    let app = spawn_app_on(&db_url, |_| {}).await;
    let run = new_run(&app, "st-14").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = ServerProcess::start_on(&db_url, port, &[]).await;
    let base = format!("http://127.0.0.1:{port}");
    let cfg = scriptd_runner::RunnerConfig::new(base, TENANT, TOKEN, run.clone());
    let runner = actix_web::rt::spawn(async move {
        let mut runner = scriptd_runner::Runner::start(cfg).await?;
        for seq in 1..=10_000i64 {
            let item = json!({ "key": format!("k{}", seq % 20), "numVal": seq });
            runner.send_vars(vec![item]).await?;
        }
        let finished = runner.finish("SUCCEEDED").await?;
        anyhow::Ok((runner.report().clone(), finished))
    });
    // kill -9 mid-stream, then a new scriptd on the same port.
    eventually(WAIT, || async {
        let seq = run_json(&app, &run).await["streamSeq"].as_i64().unwrap();
        (seq >= 500).then_some(())
    })
    .await;
    drop(server);
    let _server = ServerProcess::start_on(&db_url, port, &[]).await;
    let (report, finished) = runner.await.unwrap().expect("the runner finishes");
    assert_eq!(report.acked, 10_000, "{report:?}");
    assert!(report.refused.is_empty(), "{report:?}");
    assert!(report.reconnects >= 1, "{report:?}");
    assert_eq!(
        (finished["status"].clone(), finished["streamSeq"].clone()),
        (json!("SUCCEEDED"), json!(10_001))
    );
    let got = run_json(&app, &run).await;
    let expected: HashMap<String, f64> = (9981..=10_000)
        .map(|s| (format!("k{}", s % 20), s as f64))
        .collect();
    assert_eq!(values(&got), expected);
    assert_eq!(got["streamSeq"], 10_001);
}
