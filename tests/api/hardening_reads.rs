//! Reads that must answer 400 VALIDATION_FAILED naming the right field, never
//! 500 or a guessed field: forged cursors, bad query parameters, and
//! non-canonical `:version` path segments.

use actors::domain::Key;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use reqwest::{Method, Response};
use scriptd::http::cursor::{encode, filter_hash};
use serde_json::Value;

use crate::helpers::*;

/// A 400 VALIDATION_FAILED whose `details.fields` names exactly `expected`,
/// each with a non-empty message; returns the body.
async fn assert_fields(res: Response, expected: &[&str]) -> Value {
    let body = assert_error(res, 400, "VALIDATION_FAILED").await;
    assert_eq!(fields(&body), expected, "{body}");
    let listed = body["details"]["fields"]
        .as_array()
        .expect("details.fields");
    assert_eq!(listed.len(), expected.len(), "{body}");
    for f in listed {
        assert!(
            f["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
    body
}

/// `GET {path}?cursor={cursor}` answers 400 naming `cursor`.
async fn assert_cursor_refused(app: &TestApp, path: &str, cursor: &str) {
    assert_fields(
        app.get(&format!("{path}?cursor={cursor}")).await,
        &["cursor"],
    )
    .await;
}

/// An `ms` far before year 1 (about 7500 BC): PostgreSQL cannot hold it.
const FORGED_MS: i64 = -300_000_000_000_000;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A cursor encoded as the server encodes one, for the list of `filters`.
fn time_cursor(ms: i64, filters: &[&str]) -> String {
    encode(Key::Time(ms, uuid::Uuid::now_v7()), &filter_hash(filters))
}

#[actix_web::test]
async fn forged_cursors_with_out_of_range_times_are_400_on_every_time_list() {
    let app = spawn_app().await;
    let script = create_script(&app, "forged-cursor").await;
    let id = script["id"].as_str().unwrap();
    let lists: [(String, Vec<&str>); 3] = [
        ("/scripts".to_string(), vec![TENANT, "", "", ""]),
        ("/runs".to_string(), vec!["runs", TENANT, "", "", "", ""]),
        (format!("/scripts/{id}/audit"), vec!["audit", id]),
    ];
    for (path, filters) in &lists {
        // the same encoding with a real time is a cursor of this list
        let ok = time_cursor(now_ms(), filters);
        app.get_json(&format!("{path}?cursor={ok}"), 200).await;
        for ms in [FORGED_MS, i64::MIN, i64::MAX, -62_135_596_800_001] {
            assert_cursor_refused(&app, path, &time_cursor(ms, filters)).await;
        }
    }
}

#[actix_web::test]
async fn forged_version_cursors_are_400() {
    let app = spawn_app().await;
    let script = create_script(&app, "forged-version-cursor").await;
    let id = script["id"].as_str().unwrap();
    create_version(&app, id).await;
    let filters = filter_hash(&["versions", id]);
    let path = format!("/scripts/{id}/versions");
    // version keys count from 1: a cursor after version 2 lists version 1
    let ok = encode(Key::Version(2), &filters);
    let page = app.get_json(&format!("{path}?cursor={ok}"), 200).await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1), "{page}");
    for v in [0, -1, i32::MIN] {
        assert_cursor_refused(&app, &path, &encode(Key::Version(v), &filters)).await;
    }
    // beyond i32, with the cursor's JSON shape written out
    for k in ["2147483648", "1e30", "99999999999999999999"] {
        let forged = URL_SAFE_NO_PAD.encode(format!(r#"{{"k":{k},"f":"{filters}"}}"#));
        assert_cursor_refused(&app, &path, &forged).await;
    }
}

#[actix_web::test]
async fn list_query_errors_name_the_parameter() {
    let app = spawn_app().await;
    let script = create_script(&app, "query-errors").await;
    let id = script["id"].as_str().unwrap();
    let versions = format!("/scripts/{id}/versions");
    let audit = format!("/scripts/{id}/audit");
    let cases: Vec<(String, &str)> = vec![
        ("/scripts?status=BOGUS".into(), "status"),
        ("/scripts?status=draft".into(), "status"),
        ("/scripts?limit=abc".into(), "limit"),
        ("/scripts?limit=-1".into(), "limit"),
        ("/scripts?limit=99999999999".into(), "limit"),
        ("/scripts?limit=1&limit=2".into(), "limit"),
        ("/scripts?status=DRAFT&status=DRAFT".into(), "status"),
        ("/scripts?bogus=1".into(), "bogus"),
        ("/runs?status=BOGUS".into(), "status"),
        ("/runs?limit=abc".into(), "limit"),
        ("/runs?limit=1&limit=2".into(), "limit"),
        ("/runs?scriptId=nope".into(), "scriptId"),
        ("/runs?bogus=1".into(), "bogus"),
        (format!("{versions}?limit=abc"), "limit"),
        (format!("{versions}?limit=1&limit=2"), "limit"),
        (format!("{versions}?status=DRAFT"), "status"),
        (format!("{audit}?limit=abc"), "limit"),
        (format!("{audit}?cursor=a&cursor=b"), "cursor"),
        (format!("{audit}?bogus=1"), "bogus"),
    ];
    for (path, field) in &cases {
        assert_fields(app.get(path).await, &[field]).await;
    }
    // /admin/actors (admin only, no tenant)
    for (query, field) in [
        ("limit=abc", "limit"),
        ("limit=1&limit=2", "limit"),
        ("kind=run&kind=run", "kind"),
        ("bogus=1", "bogus"),
    ] {
        let res = app.admin_get(&format!("/admin/actors?{query}")).await;
        assert_fields(res, &[field]).await;
    }
    // what still passes
    json_of(app.get("/scripts?status=DRAFT&limit=1").await, 200).await;
    json_of(app.get(&format!("{versions}?limit=1")).await, 200).await;
}

#[actix_web::test]
async fn query_error_messages_do_not_echo_long_values() {
    let app = spawn_app().await;
    let long = "Z".repeat(4000);
    let lists = [
        ("/scripts", "status"),
        ("/runs", "status"),
        ("/runs", "scriptId"),
        ("/scripts", "limit"),
    ];
    for path in lists.map(|(route, param)| format!("{route}?{param}={long}")) {
        let field = path
            .split(['?', '='])
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let body = assert_fields(app.get(&path).await, &[&field]).await;
        let text = body.to_string();
        assert!(text.len() < 1000, "{text}");
        assert!(!text.contains(&"Z".repeat(41)), "{text}");
    }
}

#[actix_web::test]
async fn version_path_segments_must_be_canonical() {
    let app = spawn_app().await;
    let script = create_script(&app, "canonical-version").await;
    let id = script["id"].as_str().unwrap();
    create_version(&app, id).await;
    json_of(app.get(&format!("/scripts/{id}/versions/1")).await, 200).await;
    for bad in ["+1", "01", "0", "-1", "2147483648", "1e3", "00", "1.0"] {
        let version = format!("/scripts/{id}/versions/{bad}");
        assert_fields(app.get(&version).await, &["version"]).await;
        let publish = app.req(Method::POST, &format!("{version}/publish"));
        assert_fields(send(publish).await, &["version"]).await;
    }
    // nothing was published
    let after = app.get_json(&format!("/scripts/{id}"), 200).await;
    assert_eq!(after["status"], "DRAFT", "{after}");
    assert_eq!(after["activeVersionId"], Value::Null, "{after}");
    // the canonical form still publishes
    let publish = app.req(Method::POST, &format!("/scripts/{id}/versions/1/publish"));
    let published = send_json(publish, 200).await;
    assert_eq!(published["status"], "PUBLISHED", "{published}");
}
