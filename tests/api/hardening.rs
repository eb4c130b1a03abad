//! Attacks found by outsiders (issue 12): each test drives scriptd as a hostile
//! or broken client would, over real HTTP.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::helpers::*;

const ADMIN: &str = "dev-admin";

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
