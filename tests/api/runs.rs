//! Runs, run variables and the RunActor.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(10);

#[actix_web::test]
async fn a_run_starts_on_the_active_or_a_given_version() {
    let app = spawn_app().await;
    let script = published_script(&app, "r").await;
    let res = app
        .post(
            "/runs",
            &json!({ "scriptId": script, "connectorType": "whatsapp", "connectorKey": "+55" }),
        )
        .await;
    let location = res.headers()["location"].to_str().unwrap().to_string();
    let body = json_of(res, 201).await;
    let run = &body["run"];
    assert_eq!(
        location,
        format!("/runs/{}", body["runId"].as_str().unwrap())
    );
    assert_eq!(run["id"], body["runId"]);
    assert_eq!(run["version"], 1);
    assert_eq!(run["status"], "RUNNING");
    assert_eq!(run["startedById"], "alice");
    assert_eq!(run["connectorType"], "whatsapp");
    assert_eq!(run["endedAt"], Value::Null);
    assert_eq!(run["tenantId"], TENANT);

    let pinned = json!({ "scriptId": script, "version": 2, "startedById": "bot" });
    let v2 = app.post_json("/runs", &pinned, 201).await;
    assert_eq!(
        (
            v2["run"]["version"].clone(),
            v2["run"]["startedById"].clone()
        ),
        (json!(2), json!("bot"))
    );
    let refusals = [
        (
            json!({ "scriptId": script, "version": 9 }),
            404,
            "NOT_FOUND",
        ),
        (
            json!({ "scriptId": uuid::Uuid::now_v7() }),
            404,
            "NOT_FOUND",
        ),
        (json!({ "scriptId": "nope" }), 400, "VALIDATION_FAILED"),
        (json!({}), 400, "VALIDATION_FAILED"),
    ];
    for (body, status, code) in &refusals {
        app.post_err("/runs", body, *status, code).await;
    }

    let draft = script_id(&app, "draft").await;
    let draft_run = json!({ "scriptId": draft });
    app.post_err("/runs", &draft_run, 409, "NO_ACTIVE_VERSION")
        .await;
    let archive = json!({ "status": "ARCHIVED" });
    app.patch_json(&format!("/scripts/{script}"), &archive, 200)
        .await;
    let archived_run = json!({ "scriptId": script });
    app.post_err("/runs", &archived_run, 409, "SCRIPT_ARCHIVED")
        .await;

    let req = app
        .raw(Method::POST, "/runs")
        .bearer_auth(TOKEN)
        .json(&json!({ "tenantId": "other", "scriptId": draft }));
    send_err(req, 404, "NOT_FOUND").await;
}

#[actix_web::test]
async fn variables_upsert_by_key_with_one_typed_value() {
    let app = spawn_app().await;
    let script = published_script(&app, "v").await;
    let run = start_run(&app, &script).await;
    let res = upsert(
        &app,
        &run,
        json!([
            { "key": "name", "strVal": "Ana" },
            { "key": "age", "numVal": 41.5 },
            { "key": "vip", "boolVal": true, "strVal": null },
            { "key": "profile", "jsonVal": { "a": [1, 2] } },
            { "key": "name", "strVal": "Bia" }
        ]),
    )
    .await;
    let body = json_of(res, 200).await;
    assert_eq!(body["runId"], run.as_str());
    assert_eq!(body["upserted"], 4);
    let vars = body["vars"].as_array().unwrap();
    assert_eq!(
        strings(&body["vars"], "key"),
        ["age", "name", "profile", "vip"]
    );
    assert_eq!(
        vars[1],
        json!({ "key": "name", "strVal": "Bia", "numVal": null, "boolVal": null, "jsonVal": null, "updatedAt": vars[1]["updatedAt"] })
    );
    assert_eq!(vars[0]["numVal"], 41.5);
    assert_eq!(vars[2]["jsonVal"], json!({ "a": [1, 2] }));
    assert_eq!(vars[3]["boolVal"], true);

    // A new type replaces the old one.
    let retyped = upsert(&app, &run, json!([{ "key": "name", "numVal": 7 }])).await;
    let body = json_of(retyped, 200).await;
    assert_eq!(body["vars"][0]["strVal"], Value::Null);
    assert_eq!(body["vars"][0]["numVal"], 7.0);

    let got = app.get_json(&format!("/runs/{run}"), 200).await;
    assert_eq!(got["status"], "RUNNING");
    assert_eq!(
        strings(&got["vars"], "key"),
        ["age", "name", "profile", "vip"]
    );
    assert_eq!(got["vars"][1]["numVal"], 7.0);
}

/// `n` items that each set one boolean variable.
fn bool_items(n: usize) -> Value {
    let items: Vec<Value> = (0..n)
        .map(|i| json!({ "key": format!("k{i}"), "boolVal": true }))
        .collect();
    json!(items)
}

#[actix_web::test]
async fn invalid_variables_answer_400_with_the_item_named() {
    let app = spawn_app().await;
    let script = published_script(&app, "bad").await;
    let run = start_run(&app, &script).await;
    let cases = vec![
        (json!([]), "body"),
        (json!([{ "key": "bad key", "strVal": "x" }]), "[0].key"),
        (
            json!([{ "key": "a", "strVal": "x" }, { "key": "b" }]),
            "[1]",
        ),
        (json!([{ "key": "a", "strVal": "x", "numVal": 1 }]), "[0]"),
        (json!([{ "key": "a", "jsonVal": null }]), "[0]"),
        (json!([{ "key": "a", "numVal": "1" }]), "[0].numVal"),
        (json!([{ "key": "a", "strVal": "x", "extra": 1 }]), "[0]"),
        (json!({ "key": "a" }), "body"),
    ];
    for (body, field) in cases {
        let res = upsert(&app, &run, body.clone()).await;
        let err = assert_error(res, 400, "VALIDATION_FAILED").await;
        assert!(
            fields(&err).iter().any(|f| f.starts_with(field)),
            "{body} → {err}"
        );
    }
    let res = upsert(&app, &run, bool_items(501)).await;
    assert_error(res, 400, "VALIDATION_FAILED").await;
    let res = upsert(&app, &run, bool_items(500)).await;
    assert_eq!(json_of(res, 200).await["upserted"], 500);
    let huge = json!([{ "key": "big", "strVal": "x".repeat(1024 * 1024) }]);
    assert_error(upsert(&app, &run, huge).await, 413, "PAYLOAD_TOO_LARGE").await;
    let req = app
        .req(Method::POST, &format!("/runs/{run}/vars"))
        .header("content-type", "application/json")
        .body("[{\"key\": \"a\", \"numVal\": 1e400}]");
    assert_eq!(send(req).await.status(), 400);
    let one = json!([{ "key": "a", "strVal": "x" }]);
    let unknown = uuid::Uuid::now_v7().to_string();
    for (id, status, code) in [
        ("not-a-uuid", 400, "VALIDATION_FAILED"),
        (&unknown, 404, "NOT_FOUND"),
    ] {
        assert_error(upsert(&app, id, one.clone()).await, status, code).await;
    }
}

/// The database holds the key rule too (a second process, or a fix by hand,
/// cannot store what the API refuses), and it is the API's rule exactly.
#[actix_web::test]
async fn the_database_refuses_the_keys_the_api_refuses() {
    let app = spawn_app().await;
    let script = published_script(&app, "keys").await;
    let run = start_run(&app, &script).await;
    let db = app.db().await;
    let run_id: uuid::Uuid = run.parse().unwrap();
    let insert = "INSERT INTO run_variables (run_id, key, bool_val, updated_at) VALUES ($1, $2, true, now())";
    let longest = "k".repeat(200);
    for good in ["a", "A.b:c-d_9", longest.as_str()] {
        db.execute(insert, &[&run_id, &good])
            .await
            .unwrap_or_else(|e| panic!("{good:?}: {e}"));
        let res = upsert(&app, &run, json!([{ "key": good, "boolVal": false }])).await;
        assert_eq!(json_of(res, 200).await["upserted"], 1);
    }
    let too_long = "k".repeat(201);
    for bad in ["", "a b", "é", "a\nb", "a/b", too_long.as_str()] {
        let err = db.execute(insert, &[&run_id, &bad]).await.expect_err(bad);
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION),
            "{bad:?}: {err}"
        );
        let res = upsert(&app, &run, json!([{ "key": bad, "boolVal": true }])).await;
        assert_error(res, 400, "VALIDATION_FAILED").await;
    }
}

#[actix_web::test]
async fn finish_ends_the_run_and_refuses_later_writes() {
    let app = spawn_app().await;
    let script = published_script(&app, "f").await;
    let run = start_run(&app, &script).await;
    let res = upsert(&app, &run, json!([{ "key": "a", "strVal": "x" }])).await;
    json_of(res, 200).await;
    for status in ["RUNNING", "DONE"] {
        let res = finish(&app, &run, status).await;
        assert_error(res, 400, "VALIDATION_FAILED").await;
    }
    let done = json_of(finish(&app, &run, "SUCCEEDED").await, 200).await;
    assert_eq!(done["status"], "SUCCEEDED");
    assert!(done["endedAt"].as_str().unwrap().ends_with('Z'));
    let res = finish(&app, &run, "FAILED").await;
    assert_error(res, 409, "RUN_FINISHED").await;
    let res = upsert(&app, &run, json!([{ "key": "b", "strVal": "y" }])).await;
    assert_error(res, 409, "RUN_FINISHED").await;
    let got = app.get_json(&format!("/runs/{run}"), 200).await;
    assert_eq!(got["vars"].as_array().unwrap().len(), 1);
    assert_eq!(got["status"], "SUCCEEDED");
}

#[actix_web::test]
async fn another_tenants_run_is_404_everywhere() {
    let app = spawn_app().await;
    let script = published_script(&app, "iso").await;
    let run = start_run(&app, &script).await;
    let other = |m: Method, p: String| app.as_tenant(m, &p, "intruder");
    let checks = vec![
        other(Method::GET, format!("/runs/{run}")),
        other(Method::POST, format!("/runs/{run}/vars"))
            .json(&json!([{ "key": "a", "strVal": "x" }])),
        other(Method::POST, format!("/runs/{run}/finish")).json(&json!({ "status": "FAILED" })),
        other(Method::POST, "/runs".into()).json(&json!({ "scriptId": script })),
    ];
    assert_invisible(&app, "intruder", checks, "/runs").await;
    let got = app.get_json(&format!("/runs/{run}"), 200).await;
    assert_eq!(
        (got["status"].clone(), got["vars"].clone()),
        (json!("RUNNING"), json!([]))
    );
}

#[actix_web::test]
async fn runs_list_by_script_status_and_time() {
    let app = spawn_app().await;
    let s1 = published_script(&app, "l1").await;
    let s2 = published_script(&app, "l2").await;
    let mut all = Vec::new();
    for i in 0..7 {
        all.push(start_run(&app, if i % 2 == 0 { &s1 } else { &s2 }).await);
    }
    json_of(finish(&app, &all[0], "FAILED").await, 200).await;
    let ids = |v: &Value| strings(&v["items"], "id");
    // pages, newest first
    let p1 = app.get_json("/runs?limit=3", 200).await;
    let c = p1["nextCursor"].as_str().unwrap();
    let p2 = app
        .get_json(&format!("/runs?limit=3&cursor={c}"), 200)
        .await;
    let c = p2["nextCursor"].as_str().unwrap();
    let p3 = app
        .get_json(&format!("/runs?limit=3&cursor={c}"), 200)
        .await;
    assert_eq!(p3["nextCursor"], Value::Null);
    let mut seen = ids(&p1);
    seen.extend(ids(&p2));
    seen.extend(ids(&p3));
    let mut expected = all.clone();
    expected.reverse();
    assert_eq!(seen, expected);
    let by_script = app.get_json(&format!("/runs?scriptId={s2}"), 200).await;
    assert_eq!(ids(&by_script).len(), 3);
    let failed = app.get_json("/runs?status=FAILED", 200).await;
    assert_eq!(ids(&failed), vec![all[0].clone()]);
    // from inclusive, to exclusive
    let r3 = app.get_json(&format!("/runs/{}", all[3]), 200).await;
    let t3 = r3["startedAt"].as_str().unwrap().replace('Z', "%2B00:00");
    let from = ids(&app.get_json(&format!("/runs?from={t3}"), 200).await);
    assert!(from.contains(&all[3]) && !from.contains(&all[0]));
    let to = ids(&app.get_json(&format!("/runs?to={t3}"), 200).await);
    assert!(!to.contains(&all[3]) && to.contains(&all[0]));
    app.get_invalid("/runs?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z")
        .await;
    app.get_invalid("/runs?from=yesterday").await;
    let c = p1["nextCursor"].as_str().unwrap();
    app.get_invalid(&format!("/runs?limit=3&cursor={c}&status=RUNNING"))
        .await;
}

#[actix_web::test]
async fn concurrent_upserts_on_overlapping_keys_keep_every_acknowledged_write() {
    let app = spawn_app().await;
    let script = published_script(&app, "hot").await;
    let run = start_run(&app, &script).await;
    let clients = 64;
    let per_client = 15;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let req_for = |seq: usize| {
            app.req(Method::POST, &format!("/runs/{run}/vars"))
                .json(&json!([
                    { "key": format!("shared{}", (c + seq) % 8), "strVal": format!("c{c}-{seq}") },
                    { "key": format!("own{c}"), "numVal": seq }
                ]))
        };
        let reqs: Vec<_> = (0..per_client).map(req_for).collect();
        tasks.push(async move {
            let mut log = Vec::new();
            for (seq, req) in reqs.into_iter().enumerate() {
                let sent = started.elapsed();
                let res = req.send().await.unwrap();
                assert_eq!(res.status(), 200);
                let acked = started.elapsed();
                log.push((
                    format!("shared{}", (c + seq) % 8),
                    format!("c{c}-{seq}"),
                    sent,
                    acked,
                ));
            }
            log
        });
    }
    let logs: Vec<_> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .flatten()
        .collect();
    let got = app.get_json(&format!("/runs/{run}"), 200).await;
    let stored: HashMap<String, Value> = got["vars"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["key"].as_str().unwrap().to_string(), v.clone()))
        .collect();
    // Each client's own key holds its last acknowledged write.
    for c in 0..clients {
        assert_eq!(
            stored[&format!("own{c}")]["numVal"],
            (per_client - 1) as f64
        );
    }
    // Each shared key holds an acknowledged write, and no write to that key was
    // sent after that one had been acknowledged (it would have had to win).
    for k in 0..8 {
        let key = format!("shared{k}");
        let value = stored[&key]["strVal"].as_str().unwrap();
        let winner = logs
            .iter()
            .find(|l| l.0 == key && l.1 == value)
            .expect("an acknowledged write");
        let later = logs.iter().filter(|l| l.0 == key && l.2 > winner.3).count();
        assert_eq!(
            later, 0,
            "{key}: {later} writes sent after {value} was acknowledged were lost"
        );
    }
}

#[actix_web::test]
async fn no_upsert_is_acknowledged_after_the_finish() {
    let app = spawn_app().await;
    let script = published_script(&app, "race").await;
    let run = start_run(&app, &script).await;
    let started = Instant::now();
    let acknowledged = std::sync::atomic::AtomicUsize::new(0);
    let acknowledged = &acknowledged;
    let mut tasks = Vec::new();
    for c in 0..32 {
        let reqs: Vec<_> = (0..10)
            .map(|seq| {
                app.req(Method::POST, &format!("/runs/{run}/vars"))
                    .json(&json!([{ "key": format!("k{c}-{seq}"), "boolVal": true }]))
            })
            .collect();
        tasks.push(async move {
            let mut out = Vec::new();
            for (seq, req) in reqs.into_iter().enumerate() {
                let sent = started.elapsed();
                let status = req.send().await.unwrap().status().as_u16();
                if status == 200 {
                    acknowledged.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                out.push((format!("k{c}-{seq}"), status, sent, started.elapsed()));
            }
            out
        });
    }
    let finisher = async {
        // Finish while upserts are in full flow: after some were acknowledged.
        eventually(WAIT, || async {
            (acknowledged.load(std::sync::atomic::Ordering::SeqCst) >= 20).then_some(())
        })
        .await;
        let res = finish(&app, &run, "CANCELLED").await;
        let acked = started.elapsed();
        assert_eq!(res.status(), 200);
        acked
    };
    let (results, finish_acked) =
        futures::future::join(futures::future::join_all(tasks), finisher).await;
    let results: Vec<_> = results.into_iter().flatten().collect();
    let got = app.get_json(&format!("/runs/{run}"), 200).await;
    let stored = strings(&got["vars"], "key");
    let ended = got["endedAt"].as_str().unwrap().to_string();
    let mut ok = 0;
    for (key, status, sent, _) in &results {
        match status {
            200 => {
                ok += 1;
                assert!(stored.contains(key), "acknowledged {key} is not stored");
            }
            409 => assert!(!stored.contains(key)),
            other => panic!("unexpected status {other}"),
        }
        if *sent > finish_acked {
            assert_eq!(
                *status, 409,
                "{key} was sent after the finish was acknowledged"
            );
        }
    }
    assert_eq!(stored.len(), ok);
    for v in got["vars"].as_array().unwrap() {
        assert!(v["updatedAt"].as_str().unwrap() <= ended.as_str());
    }
}

#[actix_web::test]
async fn a_restarted_run_actor_reloads_its_status() {
    let app = spawn_app().await;
    let script = published_script(&app, "rs").await;
    let run = start_run(&app, &script).await;
    json_of(
        upsert(&app, &run, json!([{ "key": "a", "strVal": "x" }])).await,
        200,
    )
    .await;
    let rid = uuid::Uuid::parse_str(&run).unwrap();
    inject_failure(app.state.services.runs.actors(), rid, false).await;
    json_of(
        upsert(&app, &run, json!([{ "key": "b", "strVal": "y" }])).await,
        200,
    )
    .await;
    // Finished in the database behind the actor's back (as another process would).
    let db = app.db().await;
    db.execute(
        "UPDATE script_runs SET status = 'FAILED', ended_at = now() WHERE id = $1",
        &[&rid],
    )
    .await
    .unwrap();
    inject_failure(app.state.services.runs.actors(), rid, false).await;
    let res = upsert(&app, &run, json!([{ "key": "c", "strVal": "z" }])).await;
    assert_error(res, 409, "RUN_FINISHED").await;
    inject_failure(app.state.services.runs.actors(), rid, true).await;
    assert_error(finish(&app, &run, "FAILED").await, 409, "RUN_FINISHED").await;
    assert_eq!(
        app.state
            .services
            .runs
            .actors()
            .registry()
            .counts()
            .restarted,
        3
    );
}

#[actix_web::test]
async fn a_full_run_queue_answers_503_with_retry_after() {
    let app = spawn_app_with(|s| s.actors.run_queue_max = 1).await;
    let script = published_script(&app, "q").await;
    let run = start_run(&app, &script).await;
    let reqs: Vec<_> = (0..60)
        .map(|i| {
            app.req(Method::POST, &format!("/runs/{run}/vars"))
                .json(&json!([{ "key": format!("k{i}"), "numVal": i }]))
        })
        .collect();
    let results = send_all(reqs).await;
    let mut busy = 0;
    for res in results {
        match res.status().as_u16() {
            200 => {}
            503 => {
                busy += 1;
                assert!(res.headers().contains_key("retry-after"));
                assert_error(res, 503, "UNAVAILABLE").await;
            }
            s => panic!("status {s}"),
        }
    }
    assert!(busy > 0, "the queue never filled");
}

#[actix_web::test]
async fn run_events_reach_the_stream_of_the_run() {
    let app = spawn_app().await;
    let script = published_script(&app, "ev").await;
    let mut all = app.sse(TENANT, "").await;
    let run = start_run(&app, &script).await;
    let two = json!([{ "key": "b", "strVal": "x" }, { "key": "a", "boolVal": false }]);
    json_of(upsert(&app, &run, two).await, 200).await;
    json_of(finish(&app, &run, "SUCCEEDED").await, 200).await;
    let started = all.next(WAIT).await.unwrap();
    assert_eq!(started.event, "Run.Started.v1");
    assert_eq!(started.json()["correlationId"], run.as_str());
    assert_eq!(
        started.json()["payload"],
        json!({ "runId": run, "scriptId": script, "version": 1 })
    );
    let vars = all.next(WAIT).await.unwrap();
    assert_eq!(vars.event, "Run.VarsUpserted.v1");
    assert_eq!(
        vars.json()["payload"],
        json!({ "runId": run, "keys": ["a", "b"] })
    );
    let finished = all.next(WAIT).await.unwrap();
    assert_eq!(finished.event, "Run.Finished.v1");
    assert_eq!(
        finished.json()["payload"],
        json!({ "runId": run, "status": "SUCCEEDED" })
    );
    assert_eq!(finished.json()["success"], true);
    // Exactly these three: no second Run.Finished.v1 follows.
    all.expect_silence(Duration::from_millis(500)).await;
    // One run's events, replayed by correlation id.
    let mut one = app
        .sse(TENANT, &format!("&correlationId={run}&lastEventId=0"))
        .await;
    let names: Vec<String> = [
        one.next(WAIT).await,
        one.next(WAIT).await,
        one.next(WAIT).await,
    ]
    .into_iter()
    .map(|e| e.unwrap().event)
    .collect();
    assert_eq!(
        names,
        vec!["Run.Started.v1", "Run.VarsUpserted.v1", "Run.Finished.v1"]
    );
    one.expect_silence(Duration::from_millis(300)).await;
}

async fn writer_stat(app: &TestApp, what: &str) -> i64 {
    metric_value(app, &format!("scriptd_var_writer{{what=\"{what}\"}}")).await
}

/// Messages waiting in a run actor (its mailbox and its queue).
async fn run_mailbox(app: &TestApp, run: &str) -> i64 {
    let res = app.admin_get("/admin/actors?kind=run").await;
    json_of(res, 200).await["actors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == run)
        .map_or(0, |a| a["mailbox"].as_i64().unwrap())
}

/// One bad request fails alone: the writer retries a failed group statement
/// run by run, and a run actor retries a failed batch request by request.
#[actix_web::test]
async fn a_failing_write_fails_only_its_own_request() {
    let app = spawn_app_with(|s| s.actors.var_write_statements = 1).await;
    let script = published_script(&app, "poison").await;
    let (a, b, c) = (
        start_run(&app, &script).await,
        start_run(&app, &script).await,
        start_run(&app, &script).await,
    );
    let mut db = app.db().await;
    db.batch_execute(
        "ALTER TABLE run_variables ADD CONSTRAINT test_poison CHECK (key <> 'poison') NOT VALID",
    )
    .await
    .unwrap();
    let send = |run: &str, key: &str| {
        tokio::spawn(
            app.req(Method::POST, &format!("/runs/{run}/vars"))
                .json(&json!([{ "key": key, "strVal": format!("{run}/{key}") }]))
                .send(),
        )
    };
    let waiting = |what: &'static str, at_least: i64| {
        let app = &app;
        eventually(WAIT, move || async move {
            (writer_stat(app, what).await >= at_least).then_some(())
        })
    };

    // The writer's only statement waits for run A's row...
    let lock = db.transaction().await.unwrap();
    let a_id: uuid::Uuid = a.parse().unwrap();
    lock.execute(
        "SELECT 1 FROM script_runs WHERE id = $1 FOR UPDATE",
        &[&a_id],
    )
    .await
    .unwrap();
    let first = send(&a, "a0");
    waiting("statements", 1).await;
    // ...so B's and C's first batches wait for the next statement, together,
    let b_first = send(&b, "b0");
    waiting("queued", 1).await;
    let c_first = send(&c, "poison");
    waiting("queued", 2).await;
    // and B's next requests wait in B's actor for its next batch.
    let b_next: Vec<_> = ["b1", "poison", "b2"].iter().map(|k| send(&b, k)).collect();
    eventually(WAIT, || async {
        (run_mailbox(&app, &b).await >= 3).then_some(())
    })
    .await;
    lock.rollback().await.unwrap();

    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    assert_eq!(b_first.await.unwrap().unwrap().status(), 200);
    assert_error(c_first.await.unwrap().unwrap(), 500, "INTERNAL").await;
    let statuses: Vec<u16> = futures::future::join_all(b_next)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap().status().as_u16())
        .collect();
    assert_eq!(statuses, vec![200, 500, 200]);
    assert!(writer_stat(&app, "group_retries").await >= 1);

    let vars = |run: String| {
        let app = &app;
        async move {
            let got = app.get_json(&format!("/runs/{run}"), 200).await;
            strings(&got["vars"], "key")
        }
    };
    assert_eq!(vars(a.clone()).await, vec!["a0"]);
    assert_eq!(vars(b.clone()).await, vec!["b0", "b1", "b2"]);
    assert!(vars(c.clone()).await.is_empty());
    // The runs stay writable.
    let res = upsert(&app, &c, json!([{ "key": "c1", "boolVal": true }])).await;
    assert_eq!(json_of(res, 200).await["upserted"], 1);
}

/// Makes the actor that owns `key` fail (a test hook of the core).
async fn inject_failure<A: actors::keyed::KeyedActor>(
    actors: &actors::keyed::Actors<A>,
    key: uuid::Uuid,
    panic: bool,
) {
    actors.inject_failure(key, panic).await.unwrap();
}
