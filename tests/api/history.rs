//! Editor history (issue 17): version diff, restore, and three-way merge of
//! concurrent edits, over real HTTP.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

/// A script whose versions have these graphs (and variables), in order.
async fn script_with(app: &TestApp, slug: &str, versions: &[(Value, Value)]) -> String {
    let id = script_id(app, slug).await;
    for (graph, vars) in versions {
        let mut body = json!({ "graphJson": graph });
        if !vars.is_null() {
            body["variablesDef"] = vars.clone();
        }
        app.post_json(&format!("/scripts/{id}/versions"), &body, 201)
            .await;
    }
    id
}

fn g(nodes: Value, edges: Value) -> Value {
    json!({ "nodes": nodes, "edges": edges })
}

const EMPTY_SUMMARY: [(&str, i64); 6] = [
    ("nodesAdded", 0),
    ("nodesRemoved", 0),
    ("nodesChanged", 0),
    ("edgesAdded", 0),
    ("edgesRemoved", 0),
    ("edgesChanged", 0),
];

fn summary(changes: &[(&str, i64)]) -> Value {
    let mut s = serde_json::Map::new();
    for (k, v) in EMPTY_SUMMARY {
        s.insert(k.into(), json!(v));
    }
    for (k, v) in changes {
        s.insert((*k).into(), json!(v));
    }
    Value::Object(s)
}

fn no_changes() -> Value {
    json!({ "added": [], "removed": [], "changed": [] })
}

#[actix_web::test]
async fn diff_of_added_removed_and_changed_nodes_and_edges() {
    let app = spawn_app().await;
    let v1 = g(
        json!([{ "id": "a", "text": "Hi", "meta": { "x": 1, "tags": ["t1"] } }, { "id": "b" }]),
        json!([{ "id": "e1", "from": "a", "to": "b" }]),
    );
    let v2 = g(
        json!([{ "id": "a", "text": "Hello", "meta": { "x": 1, "tags": ["t1", "t2"] } }, { "id": "c" }]),
        json!([{ "id": "e1", "from": "a", "to": "c" }, { "id": "e2", "from": "c", "to": "a" }]),
    );
    let id = script_with(
        &app,
        "diff",
        &[
            (v1, json!({ "name": "string" })),
            (v2, json!({ "name": "string", "age": "number" })),
        ],
    )
    .await;
    let d = app
        .get_json(&format!("/scripts/{id}/versions/2/diff"), 200)
        .await;
    assert_eq!(d["scriptId"], id.as_str());
    assert_eq!((d["from"].clone(), d["to"].clone()), (json!(1), json!(2)));
    assert_eq!(d["nodes"]["added"], json!([{ "id": "c" }]));
    assert_eq!(d["nodes"]["removed"], json!([{ "id": "b" }]));
    let changed = d["nodes"]["changed"].as_array().unwrap();
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0]["id"], "a");
    assert_eq!(changed[0]["before"]["text"], "Hi");
    assert_eq!(changed[0]["after"]["meta"]["tags"], json!(["t1", "t2"]));
    let ops = changed[0]["patch"].as_array().unwrap();
    assert!(
        ops.contains(&json!({ "op": "replace", "path": "/text", "value": "Hello" })),
        "{ops:?}"
    );
    assert!(
        ops.contains(&json!({ "op": "add", "path": "/meta/tags/1", "value": "t2" })),
        "{ops:?}"
    );
    assert_eq!(ops.len(), 2, "{ops:?}");
    assert_eq!(
        d["edges"]["added"],
        json!([{ "id": "e2", "from": "c", "to": "a" }])
    );
    assert_eq!(d["edges"]["removed"], json!([]));
    assert_eq!(
        d["edges"]["changed"][0]["patch"],
        json!([{ "op": "replace", "path": "/to", "value": "c" }])
    );
    assert_eq!(
        d["variablesDef"],
        json!([{ "op": "add", "path": "/age", "value": "number" }])
    );
    assert_eq!(d["graph"], json!([]));
    assert_eq!(
        d["summary"],
        summary(&[
            ("nodesAdded", 1),
            ("nodesRemoved", 1),
            ("nodesChanged", 1),
            ("edgesAdded", 1),
            ("edgesChanged", 1)
        ])
    );

    // The reverse diff: added and removed swap, the patch goes back.
    let r = app
        .get_json(&format!("/scripts/{id}/versions/1/diff?against=2"), 200)
        .await;
    assert_eq!((r["from"].clone(), r["to"].clone()), (json!(2), json!(1)));
    assert_eq!(r["nodes"]["added"], json!([{ "id": "b" }]));
    assert_eq!(r["nodes"]["removed"], json!([{ "id": "c" }]));
    assert_eq!(r["nodes"]["changed"][0]["after"]["text"], "Hi");
    assert_eq!(
        r["variablesDef"],
        json!([{ "op": "remove", "path": "/age" }])
    );

    // A version against itself: nothing.
    let same = app
        .get_json(&format!("/scripts/{id}/versions/2/diff?against=2"), 200)
        .await;
    assert_eq!(same["nodes"], no_changes());
    assert_eq!(same["edges"], no_changes());
    assert_eq!(same["variablesDef"], json!([]));
    assert_eq!(same["summary"], summary(&[]));
}

#[actix_web::test]
async fn diff_against_zero_other_members_and_elements_without_ids() {
    let app = spawn_app().await;
    let v1 = json!({ "nodes": [{ "id": "a" }, { "text": "no id" }, { "id": "d" }, { "id": "d", "v": 2 }],
        "edges": [], "layout": { "zoom": 1 } });
    let v2 = json!({ "nodes": [{ "id": "a" }, { "text": "no id" }, { "text": "no id" }, { "id": "d", "v": 2 }],
        "edges": [], "layout": { "zoom": 2 }, "theme": "dark" });
    let id = script_with(
        &app,
        "noid",
        &[(v1.clone(), Value::Null), (v2, Value::Null)],
    )
    .await;
    // Against the empty graph: everything is added.
    let z = app
        .get_json(&format!("/scripts/{id}/versions/1/diff?against=0"), 200)
        .await;
    assert_eq!(z["from"], 0);
    assert_eq!(z["nodes"]["added"], v1["nodes"]);
    assert_eq!(z["summary"], summary(&[("nodesAdded", 4)]));
    assert_eq!(
        z["graph"],
        json!([{ "op": "add", "path": "/layout", "value": { "zoom": 1 } }])
    );
    assert_eq!(z["variablesDef"], json!([]));
    // Repeated id "d" and id-less nodes are matched by value: one {"id":"d"}
    // removed, a second {"text":"no id"} added, nothing "changed".
    let d = app
        .get_json(&format!("/scripts/{id}/versions/2/diff"), 200)
        .await;
    assert_eq!(d["nodes"]["added"], json!([{ "text": "no id" }]));
    assert_eq!(d["nodes"]["removed"], json!([{ "id": "d" }]));
    assert_eq!(d["nodes"]["changed"], json!([]));
    let graph_ops = d["graph"].as_array().unwrap();
    assert_eq!(graph_ops.len(), 2, "{graph_ops:?}");
    assert!(graph_ops.contains(&json!({ "op": "replace", "path": "/layout/zoom", "value": 2 })));
    assert!(graph_ops.contains(&json!({ "op": "add", "path": "/theme", "value": "dark" })));
}

#[actix_web::test]
async fn diff_refusals_and_other_tenants() {
    let app = spawn_app().await;
    let id = script_with(&app, "refuse", &[(graph(), Value::Null)]).await;
    for path in [
        format!("/scripts/{id}/versions/2/diff"),
        format!("/scripts/{id}/versions/1/diff?against=5"),
        format!("/scripts/{}/versions/1/diff", uuid::Uuid::now_v7()),
    ] {
        app.get_err(&path, 404, "NOT_FOUND").await;
    }
    // Version 1 against 0 by default.
    let d = app
        .get_json(&format!("/scripts/{id}/versions/1/diff"), 200)
        .await;
    assert_eq!(d["from"], 0);
    for query in ["against=-1", "against=x", "against=1&against=1", "other=1"] {
        let body = app
            .get_invalid(&format!("/scripts/{id}/versions/1/diff?{query}"))
            .await;
        assert_eq!(body["code"], "VALIDATION_FAILED", "{query}");
    }
    let other = app.as_tenant(Method::GET, &format!("/scripts/{id}/versions/1/diff"), "t2");
    send_err(other, 404, "NOT_FOUND").await;
}

#[actix_web::test]
async fn restore_copies_a_version_and_is_audited() {
    let app = spawn_app().await;
    let v1 = g(json!([{ "id": "a", "text": "first" }]), json!([]));
    let vars = json!({ "name": "string" });
    let id = script_with(
        &app,
        "restore",
        &[(v1.clone(), vars.clone()), (graph(), Value::Null)],
    )
    .await;
    let path = format!("/scripts/{id}/versions");
    let v3 = app
        .post_json(
            &path,
            &json!({ "fromVersion": 1, "changelog": "back", "note": "undo" }),
            201,
        )
        .await;
    assert_eq!(v3["version"], 3);
    assert_eq!(v3["graphJson"], v1);
    assert_eq!(v3["variablesDef"], vars);
    assert_eq!(v3["changelog"], "back");
    let stored = app.get_json(&format!("{path}/3"), 200).await;
    assert_eq!(stored["graphJson"], v1);
    let audit = app
        .get_json(&format!("/scripts/{id}/audit?limit=1"), 200)
        .await;
    assert_eq!(audit["items"][0]["action"], "CREATE");
    assert_eq!(audit["items"][0]["version"], 3);
    assert_eq!(audit["items"][0]["diffJson"], json!({ "restoredFrom": 1 }));
    assert_eq!(audit["items"][0]["note"], "undo");
    // Refusals; nothing is written by any of them.
    for (body, field) in [
        (
            json!({ "fromVersion": 1, "graphJson": graph() }),
            "fromVersion",
        ),
        (json!({ "fromVersion": 0 }), "fromVersion"),
        (
            json!({ "fromVersion": 1, "variablesDef": {} }),
            "variablesDef",
        ),
        (json!({ "fromVersion": 1, "merge": true }), "merge"),
        (json!({ "changelog": "neither" }), "graphJson"),
    ] {
        let err = app.post_invalid(&path, &body).await;
        assert_eq!(fields(&err), [field], "{body}");
    }
    app.post_err(&path, &json!({ "fromVersion": 9 }), 404, "NOT_FOUND")
        .await;
    app.post_err(
        &path,
        &json!({ "fromVersion": 1, "baseVersion": 1 }),
        409,
        "VERSION_CONFLICT",
    )
    .await;
    let script = app.get_json(&format!("/scripts/{id}"), 200).await;
    assert_eq!(script["latestVersion"], 3);
}

/// base v1; theirs = v2 (saved by someone else); ours = a save from v1.
async fn merge_case(
    app: &TestApp,
    slug: &str,
    base: (Value, Value),
    theirs: (Value, Value),
) -> String {
    script_with(app, slug, &[base, theirs]).await
}

async fn merge_save(app: &TestApp, id: &str, ours: Value, vars: Value) -> reqwest::Response {
    let mut body = json!({ "graphJson": ours, "baseVersion": 1, "merge": true });
    if !vars.is_null() {
        body["variablesDef"] = vars;
    }
    app.post(&format!("/scripts/{id}/versions"), &body).await
}

#[actix_web::test]
async fn disjoint_edits_merge_and_the_merge_is_audited() {
    let app = spawn_app().await;
    let base = g(
        json!([{ "id": "a", "t": 0 }, { "id": "b", "t": 0 }, { "id": "c", "t": 0 }]),
        json!([]),
    );
    let theirs = g(
        json!([{ "id": "c", "t": 0 }, { "id": "a", "t": 1 }, { "id": "b", "t": 0 }, { "id": "x" }]),
        json!([]),
    );
    let ours = g(
        json!([{ "id": "a", "t": 0 }, { "id": "b", "t": 2 }, { "id": "y" }]),
        json!([{ "id": "e", "from": "a", "to": "y" }]),
    );
    let id = merge_case(
        &app,
        "merge",
        (base, json!({ "k1": "a", "k2": "b" })),
        (theirs, json!({ "k1": "A", "k2": "b" })),
    )
    .await;
    let res = merge_save(&app, &id, ours, json!({ "k1": "a", "k2": "b", "k3": "c" })).await;
    let v = json_of(res, 201).await;
    assert_eq!(v["version"], 3);
    // Theirs' order (c, a, b, x), ours' changes applied, c deleted by ours,
    // ours' additions (y) appended.
    assert_eq!(
        v["graphJson"],
        g(
            json!([{ "id": "a", "t": 1 }, { "id": "b", "t": 2 }, { "id": "x" }, { "id": "y" }]),
            json!([{ "id": "e", "from": "a", "to": "y" }])
        )
    );
    assert_eq!(
        v["variablesDef"],
        json!({ "k1": "A", "k2": "b", "k3": "c" })
    );
    let audit = app
        .get_json(&format!("/scripts/{id}/audit?limit=1"), 200)
        .await;
    assert_eq!(
        audit["items"][0]["diffJson"],
        json!({ "mergedFrom": { "base": 1, "theirs": 2 } })
    );

    // The same edit on both sides is one change.
    let same = g(json!([{ "id": "a", "t": 1 }]), json!([]));
    let id = merge_case(
        &app,
        "same",
        (g(json!([{ "id": "a", "t": 0 }]), json!([])), Value::Null),
        (same.clone(), Value::Null),
    )
    .await;
    let v = json_of(merge_save(&app, &id, same.clone(), Value::Null).await, 201).await;
    assert_eq!(v["graphJson"], same);
}

#[actix_web::test]
async fn conflicting_edits_are_409_with_every_conflict_and_write_nothing() {
    let app = spawn_app().await;
    let base = g(
        json!([{ "id": "a", "t": 0 }, { "id": "b", "t": 0 }]),
        json!([]),
    );
    let theirs = g(
        json!([{ "id": "a", "t": 1 }, { "id": "b", "t": 1 }, { "id": "n", "v": 1 }]),
        json!([]),
    );
    // ours: deletes a (theirs changed it), changes b differently, adds n differently.
    let ours = g(
        json!([{ "id": "b", "t": 2 }, { "id": "n", "v": 2 }]),
        json!([]),
    );
    let id = merge_case(
        &app,
        "conflict",
        (base, json!({ "k": 1 })),
        (theirs, json!({ "k": 2 })),
    )
    .await;
    let res = merge_save(&app, &id, ours, json!({ "k": 3 })).await;
    let err = assert_error(res, 409, "MERGE_CONFLICT").await;
    assert_eq!(err["details"]["latestVersion"], 2);
    assert_eq!(
        err["details"]["conflicts"],
        json!([
            { "kind": "node", "id": "a", "base": { "id": "a", "t": 0 }, "theirs": { "id": "a", "t": 1 }, "ours": null },
            { "kind": "node", "id": "b", "base": { "id": "b", "t": 0 }, "theirs": { "id": "b", "t": 1 }, "ours": { "id": "b", "t": 2 } },
            { "kind": "node", "id": "n", "base": null, "theirs": { "id": "n", "v": 1 }, "ours": { "id": "n", "v": 2 } },
            { "kind": "variablesDef", "id": "k", "base": 1, "theirs": 2, "ours": 3 }
        ])
    );
    let script = app.get_json(&format!("/scripts/{id}"), 200).await;
    assert_eq!(script["latestVersion"], 2);
    let audit = app.get_json(&format!("/scripts/{id}/audit"), 200).await;
    assert_eq!(items(&audit).len(), 3);
    // Without merge, or above the latest: the plain rules.
    let path = format!("/scripts/{id}/versions");
    app.post_err(
        &path,
        &json!({ "graphJson": graph(), "baseVersion": 1 }),
        409,
        "VERSION_CONFLICT",
    )
    .await;
    app.post_err(
        &path,
        &json!({ "graphJson": graph(), "baseVersion": 7, "merge": true }),
        409,
        "VERSION_CONFLICT",
    )
    .await;
    let plain = app
        .post_json(
            &path,
            &json!({ "graphJson": graph(), "baseVersion": 2, "merge": true }),
            201,
        )
        .await;
    assert_eq!(plain["graphJson"], graph());
}

/// 20 merging saves of disjoint edits from the same base, sent at once to
/// two processes: all succeed, numbered without gaps, every edit kept.
#[actix_web::test]
async fn concurrent_merging_saves_on_two_processes_all_land() {
    let db_url = fresh_database().await;
    let a = ServerProcess::start(&db_url, &[]).await;
    let b = ServerProcess::start(&db_url, &[]).await;
    let client = reqwest::Client::new();
    let send = |url: String, body: Value| {
        client
            .post(url)
            .bearer_auth("alice")
            .header("x-tenant-id", TENANT)
            .json(&body)
    };
    let script = send_json(
        send(a.url("/scripts"), json!({ "name": "M", "slug": "m" })),
        201,
    )
    .await;
    let id = str_of(&script["id"]);
    let nodes: Vec<Value> = (0..20)
        .map(|i| json!({ "id": format!("n{i}"), "t": 0 }))
        .collect();
    let path = format!("/scripts/{id}/versions");
    send_json(
        send(
            a.url(&path),
            json!({ "graphJson": g(json!(nodes), json!([])) }),
        ),
        201,
    )
    .await;
    let saves = (0..20).map(|i| {
        let mut mine = nodes.clone();
        mine[i]["t"] = json!(i + 1);
        let proc = if i % 2 == 0 { &a } else { &b };
        let body =
            json!({ "graphJson": g(json!(mine), json!([])), "baseVersion": 1, "merge": true });
        send_json(send(proc.url(&path), body), 201)
    });
    let created = futures::future::join_all(saves).await;
    let mut numbers: Vec<i64> = created
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (2..=21).collect::<Vec<i64>>());
    let latest = send_json(
        client
            .get(a.url(&format!("{path}/21")))
            .bearer_auth("alice")
            .header("x-tenant-id", TENANT),
        200,
    )
    .await;
    let expected: Vec<Value> = (0..20)
        .map(|i| json!({ "id": format!("n{i}"), "t": i + 1 }))
        .collect();
    assert_eq!(latest["graphJson"], g(json!(expected), json!([])));
}
