//! `diff-5k`: version diff and three-way merge on a graph of 5,000 nodes, in
//! process (the pure functions) and over HTTP (read, diff and merge under the
//! script's row lock, and the response).

use super::*;

const NODES: usize = 5_000;

/// A 5,000-node chain; `edit` changes every `step`-th node's text.
fn big_graph(edit: &str, step: usize) -> serde_json::Value {
    let nodes: Vec<serde_json::Value> = (0..NODES)
        .map(|i| {
            let text = if step > 0 && i % step == 0 {
                edit
            } else {
                "same"
            };
            serde_json::json!({ "id": format!("n{i}"), "type": "message", "text": text,
                "meta": { "x": i, "y": i * 2, "tags": ["a", "b"] } })
        })
        .collect();
    let edges: Vec<serde_json::Value> = (1..NODES)
        .map(|i| serde_json::json!({ "id": format!("e{i}"), "from": format!("n{}", i - 1), "to": format!("n{i}") }))
        .collect();
    serde_json::json!({ "nodes": nodes, "edges": edges })
}

/// The median of `runs` timings of `f`, in ms.
fn median_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    times[runs / 2]
}

/// A script with the two graphs as versions 1 and 2; its versions path.
async fn big_script(env: &Env, graphs: [&serde_json::Value; 2]) -> Result<String> {
    let created: serde_json::Value = env
        .http
        .post(env.url("/scripts"))
        .bearer_auth("bench")
        .header("x-tenant-id", TENANT)
        .json(&serde_json::json!({ "name": "Big", "slug": "big-graph" }))
        .send()
        .await?
        .json()
        .await?;
    let id = created["id"].as_str().context("script id")?;
    let path = format!("/scripts/{id}/versions");
    for g in graphs {
        let body = serde_json::json!({ "graphJson": g });
        let req = env.http.post(env.url(&path)).bearer_auth("bench");
        let status = req
            .header("x-tenant-id", TENANT)
            .json(&body)
            .send()
            .await?
            .status();
        if status != 201 {
            bail!("creating a {NODES}-node version answered {status}");
        }
    }
    Ok(path)
}

pub async fn diff_5k(env: &Env, _args: &Args) -> Result<Row> {
    eprintln!("diff-5k: diff and merge of {NODES}-node graphs, in process and over HTTP");
    let null = serde_json::Value::Null;
    let base = big_graph("", 0);
    let theirs = big_graph("theirs", 10);
    let ours = big_graph("ours", 0);
    // ours edits other nodes than theirs: every 10th + 5.
    let mut ours = ours;
    for i in (5..NODES).step_by(10) {
        ours["nodes"][i]["text"] = "ours".into();
    }
    let diff = median_ms(21, || {
        let _ = actors::domain::history::diff(&base, &null, &theirs, &null);
    });
    let merge = median_ms(21, || {
        let _ = actors::domain::history::merge((&base, &null), (&theirs, &null), (&ours, &null));
    });
    let path = big_script(env, [&base, &theirs]).await?;
    let mut conn = RawConn::new(env.base.trim_start_matches("http://"));
    let mut http_diff = Vec::new();
    for _ in 0..21 {
        let t0 = Instant::now();
        if conn.send("GET", &format!("{path}/2/diff"), b"").await != 200 {
            bail!("GET diff failed");
        }
        http_diff.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let merge_body = serde_json::to_vec(
        &serde_json::json!({ "graphJson": ours, "baseVersion": 1, "merge": true }),
    )?;
    let mut http_merge = Vec::new();
    for _ in 0..11 {
        let t0 = Instant::now();
        let status = conn.send("POST", &path, &merge_body).await;
        if status != 201 {
            bail!("merging save answered {status}");
        }
        http_merge.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    Ok(Row {
        scenario: "diff-5k".into(),
        p50: Some(med(&mut http_diff)),
        note: format!(
            "in process: diff {diff:.1} ms, merge {merge:.1} ms (target < 50 ms); over HTTP p50: GET diff {:.1} ms, merging save {:.1} ms",
            med(&mut http_diff),
            med(&mut http_merge)
        ),
        ..Row::default()
    })
}
