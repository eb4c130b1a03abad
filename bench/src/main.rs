//! scriptd-bench: starts a PostgreSQL and a release scriptd, loads data, runs
//! each scenario against scriptd over HTTP on 127.0.0.1 and the equivalent SQL
//! with pgbench on the same PostgreSQL, and prints one table.
//!
//! Run it with `bench/run` (which builds the release binaries first).

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures::StreamExt;
use hdrhistogram::Histogram;
use scriptd::embedded::{EmbeddedOptions, EmbeddedPostgres};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod bus;
mod history;
mod stream;

const TENANT: &str = "bench";
const GRAPH: &str = r#"{"nodes":[{"id":"n1"}],"edges":[]}"#;
const SCRIPTS: usize = 1000;
const RUNS: usize = 8;
const KEYS: usize = 100;
const SHALLOW: usize = 998;
const DEEP: usize = 999;

#[derive(Parser)]
struct Args {
    /// The scriptd binary to measure (a release build).
    #[arg(long, default_value = "target/release/scriptd")]
    scriptd: PathBuf,
    /// Seconds measured per scenario.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of warm-up before each measurement.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Concurrent connections of the HTTP scenarios and of pgbench.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// SSE sessions of `sse-fanout`.
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// Audit rows of the deep script in `audit-depth`.
    #[arg(long, default_value_t = 1_000_000)]
    deep_rows: usize,
    /// Keys per run of the `vars-stream` lines (0: 256 × variables per
    /// frame, so no key repeats among a connection's frames in flight and the
    /// server cannot merge two writes of one key into one row write).
    #[arg(long, default_value_t = 0)]
    stream_keys: usize,
    /// Comma-separated scenarios (default: all).
    #[arg(long)]
    only: Option<String>,
}

fn script_id(n: usize) -> String {
    format!("00000000-0000-7000-8000-{n:012}")
}
fn version_id(n: usize) -> String {
    format!("00000000-0000-7000-a000-{n:012}")
}
fn run_id(n: usize) -> String {
    format!("00000000-0000-7000-9000-{n:012}")
}

/// A tiny xorshift: the load generator needs speed, not quality.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct Env {
    _pg: EmbeddedPostgres,
    /// The postmaster's pid (PostgreSQL's CPU is it and its children).
    postmaster: u32,
    socket_dir: String,
    db_conn: String,
    server: Child,
    base: String,
    http: reqwest::Client,
}

impl Drop for Env {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.server.id() as i32, libc::SIGTERM);
        }
        let _ = self.server.wait();
    }
}

impl Env {
    fn pid(&self) -> u32 {
        self.server.id()
    }

    /// (current RSS, peak RSS) of scriptd in KiB.
    fn rss(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    fn reset_peak(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5");
    }

    async fn sql(&self) -> Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(&self.db_conn, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn post(&self, path: &str, body: &'static str) -> reqwest::RequestBuilder {
        self.http
            .post(self.url(path))
            .bearer_auth("bench")
            .header("x-tenant-id", TENANT)
            .header("content-type", "application/json")
            .body(body)
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn start(args: &Args, dir: &std::path::Path) -> Result<Env> {
    eprintln!("starting PostgreSQL (fsync on) in {}", dir.display());
    let opts = EmbeddedOptions::new(dir.join("pg"));
    let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&opts)).await??;
    scriptd::embedded::ensure_database(&pg, "bench").await?;
    let db_conn = pg.connection_string("bench");
    let socket_dir = db_conn
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("host="))
        .unwrap_or_default()
        .to_string();
    let port = free_port()?;
    eprintln!("starting {} on port {port}", args.scriptd.display());
    let server = Command::new(&args.scriptd)
        .args(["serve", "--port", &port.to_string()])
        .env("DATABASE_URL", &db_conn)
        .env("RUST_LOG", "warn")
        .env("SCRIPTD__RATE_LIMIT__ENABLED", "false")
        .env("SCRIPTD__OUTBOX__DEV_DELAY_MIN_MS", "0")
        .env("SCRIPTD__OUTBOX__DEV_DELAY_MAX_MS", "0")
        .env("SCRIPTD__EVENTS__SESSION_BUFFER", "256")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting scriptd (build it with cargo build --release)")?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    let postmaster = std::fs::read_to_string(dir.join("pg").join("postmaster.pid"))?
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .context("reading postmaster.pid")?;
    let env = Env {
        _pg: pg,
        postmaster,
        socket_dir,
        db_conn,
        server,
        base: format!("http://127.0.0.1:{port}"),
        http,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = env.http.get(env.url("/readyz")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("scriptd did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(env)
}

async fn load_data(env: &Env, deep_rows: usize) -> Result<()> {
    eprintln!("loading data: {SCRIPTS} scripts, {RUNS} runs, audit rows 1,000 and {deep_rows}");
    let db = env.sql().await?;
    db.batch_execute(&format!(
        "INSERT INTO scripts (id, tenant_id, name, slug, status, latest_version, revision, created_by_id, updated_by_id, created_at, updated_at)
           SELECT ('00000000-0000-7000-8000-' || lpad(n::text, 12, '0'))::uuid, '{TENANT}', 'Bench ' || n, 'bench-' || n,
                  'DRAFT', 0, 1, 'bench', 'bench', now(), now() FROM generate_series(0, {last}) n;
         INSERT INTO script_versions (id, script_id, tenant_id, version, graph_json, is_published, created_by_id, created_at)
           SELECT ('00000000-0000-7000-a000-' || lpad(n::text, 12, '0'))::uuid, ('00000000-0000-7000-8000-' || lpad(n::text, 12, '0'))::uuid,
                  '{TENANT}', 1, '{GRAPH}', true, 'bench', now() FROM generate_series(0, {last}) n;
         UPDATE scripts SET latest_version = 1, status = 'PUBLISHED',
                active_version_id = ('00000000-0000-7000-a000-' || substr(id::text, 25))::uuid WHERE tenant_id = '{TENANT}';
         INSERT INTO script_runs (id, tenant_id, script_id, version, status, started_at)
           SELECT ('00000000-0000-7000-9000-' || lpad(n::text, 12, '0'))::uuid, '{TENANT}', '{hot}', 1, 'RUNNING', now()
           FROM generate_series(0, {runs}) n;
         INSERT INTO script_audit_logs (id, script_id, tenant_id, action, version, actor_id, created_at)
           SELECT gen_random_uuid(), '{shallow}', '{TENANT}', 'UPDATE', 1, 'bench', now() - n * interval '1 millisecond'
           FROM generate_series(1, 1000) n;
         INSERT INTO script_audit_logs (id, script_id, tenant_id, action, version, actor_id, created_at)
           SELECT gen_random_uuid(), '{deep}', '{TENANT}', 'UPDATE', 1, 'bench', now() - n * interval '1 millisecond'
           FROM generate_series(1, {deep_rows}) n;
         ANALYZE;",
        last = SCRIPTS - 1,
        runs = RUNS - 1,
        hot = script_id(0),
        shallow = script_id(SHALLOW),
        deep = script_id(DEEP),
    ))
    .await?;
    Ok(())
}

/// Latencies and throughput of one measured window.
struct Measured {
    count: u64,
    errors: u64,
    secs: f64,
    hist: Histogram<u64>,
    /// CPU used during the measured window.
    cpu: Cpu,
}

/// CPU seconds used so far by each side of a measurement.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    scriptd: f64,
    postgres: f64,
    /// This process: the load generator.
    client: f64,
    /// Children already waited for (pgbench).
    waited: f64,
}

impl Cpu {
    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            scriptd: self.scriptd - before.scriptd,
            postgres: self.postgres - before.postgres,
            client: self.client - before.client,
            waited: self.waited - before.waited,
        }
    }
}

/// (own utime+stime, waited-for children's cutime+cstime, parent pid) in seconds.
fn proc_cpu(pid: &str) -> Option<(f64, f64, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 2..)?
        .split_whitespace()
        .collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let ppid = fields.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    Some(((tick(11) + tick(12)) / hz, (tick(13) + tick(14)) / hz, ppid))
}

/// scriptd, PostgreSQL (the postmaster, its live children, and the children it
/// has reaped), and this process.
fn cpu_now(scriptd: u32, postmaster: u32) -> Cpu {
    let mut postgres = 0.0;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            if let Some((own, reaped, ppid)) = proc_cpu(pid) {
                if pid == postmaster.to_string() {
                    postgres += own + reaped;
                } else if ppid == postmaster {
                    postgres += own;
                }
            }
        }
    }
    let me = proc_cpu("self").unwrap_or_default();
    Cpu {
        scriptd: proc_cpu(&scriptd.to_string()).map_or(0.0, |c| c.0),
        postgres,
        client: me.0,
        waited: me.1,
    }
}

impl Measured {
    fn rps(&self) -> f64 {
        self.count as f64 / self.secs
    }
    fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Runs `conc` closed-loop workers, each on its own keep-alive connection;
/// records what completes after the warm-up. `op(worker, i)` gives the
/// request and the status it must answer.
async fn closed_loop<F>(
    addr: &str,
    conc: usize,
    warmup: Duration,
    dur: Duration,
    op: F,
    cpu: impl Fn() -> Cpu + Send + 'static,
) -> Measured
where
    F: Fn(usize, u64) -> (&'static str, String, Vec<u8>, u16) + Clone + Send + 'static,
{
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + dur;
    let sampler = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        let before = cpu();
        tokio::time::sleep_until(end.into()).await;
        cpu().since(before)
    });
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..conc {
        let op = op.clone();
        let errors = errors.clone();
        let mut conn = RawConn::new(addr);
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let mut i = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let (method, path, body, want) = op(w, i);
                let status = conn.send(method, &path, &body).await;
                i += 1;
                let t1 = Instant::now();
                if t0 >= measure_from && t1 <= end {
                    if status == want {
                        let _ = hist.record((t1 - t0).as_micros().max(1) as u64);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            hist
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    for t in tasks {
        if let Ok(h) = t.await {
            let _ = hist.add(h);
        }
    }
    Measured {
        count: hist.len(),
        errors: errors.load(Ordering::Relaxed),
        secs: dur.as_secs_f64(),
        hist,
        cpu: sampler.await.unwrap_or_default(),
    }
}

/// Runs a pgbench script on the same PostgreSQL; returns its tps.
fn pgbench(env: &Env, args: &Args, name: &str, script: &str) -> Result<f64> {
    let path = std::env::temp_dir().join(format!("scriptd-bench-{name}.sql"));
    std::fs::File::create(&path)?.write_all(script.as_bytes())?;
    let out = Command::new("pgbench")
        .args([
            "-n",
            "-M",
            "prepared",
            "-c",
            &args.connections.to_string(),
            "-j",
            "2",
        ])
        .args([
            "-T",
            &args.duration.to_string(),
            "-h",
            &env.socket_dir,
            "-p",
            "5432",
            "-U",
            "postgres",
        ])
        .arg("-f")
        .arg(&path)
        .arg("bench")
        .output()
        .context("running pgbench")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse::<f64>().ok());
    match tps {
        Some(t) => Ok(t),
        None => bail!(
            "pgbench {name} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

#[derive(Default)]
struct Row {
    scenario: String,
    rps: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
    pgbench: Option<f64>,
    /// CPU µs per request: scriptd, PostgreSQL, load generator.
    cpu_us: Option<[f64; 3]>,
    /// CPU µs per pgbench transaction: PostgreSQL, pgbench.
    pgbench_cpu_us: Option<[f64; 2]>,
    peak_rss_kib: Option<u64>,
    note: String,
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        Some(self.rps? / self.pgbench?)
    }

    /// The cells of this row in the results table.
    fn results_cells(&self) -> Vec<String> {
        vec![
            self.scenario.clone(),
            fmt_opt(self.rps, 0),
            fmt_opt(self.p50, 2),
            fmt_opt(self.p99, 2),
            fmt_opt(self.pgbench, 0),
            fmt_opt(self.ratio(), 2),
            fmt_opt(self.peak_rss_kib.map(|k| k as f64 / 1024.0), 1),
            self.note.clone(),
        ]
    }

    /// The cells of this row in the CPU table.
    fn cpu_cells(&self) -> Vec<String> {
        let c = self.cpu_us.unwrap_or_default();
        let p = self.pgbench_cpu_us;
        vec![
            self.scenario.clone(),
            format!("{:.0}", c[0]),
            format!("{:.0}", c[1]),
            format!("{:.0}", c[2]),
            format!("{:.0}", c.iter().sum::<f64>()),
            fmt_opt(p.map(|p| p[0]), 0),
            fmt_opt(p.map(|p| p[1]), 0),
            fmt_opt(p.map(|p| p[0] + p[1]), 0),
        ]
    }
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "–".into())
}

async fn http_scenario<F>(
    env: &Env,
    args: &Args,
    name: &str,
    op: F,
    pg_script: Option<String>,
) -> Result<Row>
where
    F: Fn(usize, u64) -> (&'static str, String, Vec<u8>, u16) + Clone + Send + 'static,
{
    eprintln!(
        "{name}: scriptd, {} connections, {}s + {}s warm-up",
        args.connections, args.duration, args.warmup
    );
    env.reset_peak();
    let (scriptd, postmaster) = (env.pid(), env.postmaster);
    let m = closed_loop(
        env.base.trim_start_matches("http://"),
        args.connections,
        Duration::from_secs(args.warmup),
        Duration::from_secs(args.duration),
        op,
        move || cpu_now(scriptd, postmaster),
    )
    .await;
    let (_, peak) = env.rss();
    let pg = match pg_script {
        Some(script) => {
            eprintln!("{name}: pgbench");
            let before = cpu_now(scriptd, postmaster);
            let tps = pgbench(env, args, name, &script)?;
            let used = cpu_now(scriptd, postmaster).since(before);
            Some((tps, used))
        }
        None => None,
    };
    let per = |cpu: f64, n: f64| cpu * 1e6 / n;
    let requests = m.count as f64;
    Ok(Row {
        scenario: name.into(),
        rps: Some(m.rps()),
        p50: Some(m.ms(0.5)),
        p99: Some(m.ms(0.99)),
        pgbench: pg.map(|p| p.0),
        cpu_us: Some([
            per(m.cpu.scriptd, requests),
            per(m.cpu.postgres, requests),
            per(m.cpu.client, requests),
        ]),
        pgbench_cpu_us: pg.map(|(tps, used)| {
            let tx = tps * args.duration as f64;
            [per(used.postgres, tx), per(used.waited, tx)]
        }),
        peak_rss_kib: Some(peak),
        note: if m.errors > 0 {
            format!("{} errors", m.errors)
        } else {
            String::new()
        },
    })
}

fn version_sql(id_expr: &str, pre: &str) -> String {
    format!(
        "{pre}BEGIN;
UPDATE scripts SET latest_version = latest_version + 1, revision = revision + 1, updated_by_id = 'pgbench', updated_at = now() WHERE id = {id_expr} RETURNING latest_version AS v \\gset
INSERT INTO script_versions (id, script_id, tenant_id, version, graph_json, created_by_id, created_at) VALUES (gen_random_uuid(), {id_expr}, '{TENANT}', :v, '{GRAPH}', 'pgbench', now());
INSERT INTO script_audit_logs (id, script_id, tenant_id, action, version, actor_id, created_at) VALUES (gen_random_uuid(), {id_expr}, '{TENANT}', 'CREATE', :v, 'pgbench', now());
END;
"
    )
}

fn graph_body() -> Vec<u8> {
    format!(r#"{{"graphJson":{GRAPH}}}"#).into_bytes()
}

async fn version_hot(env: &Env, args: &Args) -> Result<Row> {
    let path = format!("/scripts/{}/versions", script_id(0));
    let op = move |_, _| ("POST", path.clone(), graph_body(), 201);
    http_scenario(
        env,
        args,
        "version-hot",
        op,
        Some(version_sql(&format!("'{}'", script_id(0)), "")),
    )
    .await
}

async fn version_spread(env: &Env, args: &Args) -> Result<Row> {
    let op = move |w: usize, i: u64| {
        let mut rng = Rng(((w as u64) << 32 | i) * 2654435761 + 1);
        let path = format!("/scripts/{}/versions", script_id(rng.below(SCRIPTS - 2)));
        ("POST", path, graph_body(), 201)
    };
    let id = "('00000000-0000-7000-8000-' || lpad(:n::text, 12, '0'))::uuid";
    let pre = format!("\\set n random(0, {})\n", SCRIPTS - 3);
    http_scenario(env, args, "version-spread", op, Some(version_sql(id, &pre))).await
}

async fn vars(env: &Env, args: &Args) -> Result<Row> {
    let op = move |w: usize, i: u64| {
        let mut rng = Rng(((w as u64) << 32 | i) * 2654435761 + 7);
        let path = format!("/runs/{}/vars", run_id(w % RUNS));
        let body = format!(r#"[{{"key":"k{}","numVal":{i}}}]"#, rng.below(KEYS)).into_bytes();
        ("POST", path, body, 200)
    };
    http_scenario(env, args, "vars", op, Some(vars_pgbench_script())).await
}

/// pgbench's single-row upsert over the 8 runs and 100 keys of `vars`.
fn vars_pgbench_script() -> String {
    format!(
        "\\set r random(0, {})
\\set k random(0, {})
INSERT INTO run_variables (run_id, key, num_val, updated_at) VALUES (('00000000-0000-7000-9000-' || lpad(:r::text, 12, '0'))::uuid, 'k' || :k, :k, now()) ON CONFLICT (run_id, key) DO UPDATE SET str_val = NULL, num_val = EXCLUDED.num_val, bool_val = NULL, json_val = NULL, updated_at = EXCLUDED.updated_at;
",
        RUNS - 1,
        KEYS - 1
    )
}

/// `GET /healthz`: no database, no body to parse. The most requests scriptd
/// answers on this machine with this load generator: a ceiling for every
/// HTTP scenario.
async fn http_floor(env: &Env, args: &Args) -> Result<Row> {
    let op = move |_, _| ("GET", "/healthz".to_string(), Vec::new(), 200);
    let mut row = http_scenario(env, args, "http-floor", op, None).await?;
    row.note = "GET /healthz: HTTP alone, no database".into();
    Ok(row)
}

async fn read(env: &Env, args: &Args) -> Result<Row> {
    let path = format!("/scripts/{}", script_id(1));
    let op = move |_, _| ("GET", path.clone(), Vec::new(), 200);
    let script = format!(
        "SELECT id, tenant_id, name, slug, description, status, active_version_id, latest_version, revision, labels, intents, language_codes, embedding_key, created_by_id, updated_by_id, created_at, updated_at FROM scripts WHERE id = '{}' AND tenant_id = '{TENANT}';
SELECT v.id, v.script_id, v.version, v.graph_json, v.variables_def, v.changelog, v.is_published, v.created_by_id, v.created_at FROM script_versions v WHERE v.id = '{}';
",
        script_id(1),
        version_id(1)
    );
    http_scenario(env, args, "read", op, Some(script)).await
}

/// POST /commands at a fixed rate; the time until an SSE client receives each completion.
async fn command_to_event(env: &Env, args: &Args) -> Result<Row> {
    eprintln!("command-to-event: 200 commands/s for {}s", args.duration);
    let tenant = "bench-cmd";
    let res = env
        .http
        .get(env.url(&format!("/events/stream?tenantId={tenant}")))
        .bearer_auth("bench")
        .send()
        .await?;
    let completions = Completions::new()?;
    let reader = completions.read(res);
    let total = 200 * args.duration;
    env.reset_peak();
    let failed = post_commands(env, tenant, total, &completions.sent).await;
    let received = completions.received.clone();
    let latencies = completions.latencies.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::Relaxed) < total - failed && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reader.abort();
    let (_, peak) = env.rss();
    let h = latencies.lock().expect("lock").clone();
    let got = received.load(Ordering::Relaxed);
    Ok(Row {
        scenario: "command-to-event".into(),
        rps: Some(got as f64 / args.duration as f64),
        p50: Some(h.value_at_quantile(0.5) as f64 / 1000.0),
        p99: Some(h.value_at_quantile(0.99) as f64 / 1000.0),
        pgbench: None,
        peak_rss_kib: Some(peak),
        note: format!("{got}/{total} completions received; {failed} posts failed"),
        ..Default::default()
    })
}

/// What `command-to-event` shares between its poster and its SSE reader: the
/// send time of each command not yet seen, the latencies, how many arrived.
struct Completions {
    sent: Arc<Mutex<HashMap<String, Instant>>>,
    latencies: Arc<Mutex<Histogram<u64>>>,
    received: Arc<AtomicU64>,
}

impl Completions {
    fn new() -> Result<Self> {
        Ok(Completions {
            sent: Arc::default(),
            latencies: Arc::new(Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?)),
            received: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Reads the SSE stream `res` on a task: each event whose correlation id
    /// was sent records the time since its send.
    fn read(&self, res: reqwest::Response) -> tokio::task::JoinHandle<()> {
        let sent = self.sent.clone();
        let latencies = self.latencies.clone();
        let received = self.received.clone();
        tokio::spawn(async move {
            let mut body = res.bytes_stream();
            let mut buf = String::new();
            while let Some(Ok(chunk)) = body.next().await {
                let now = Instant::now();
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) else {
                        continue;
                    };
                    let v: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
                    if let Some(cid) = v["correlationId"].as_str() {
                        if let Some(t0) = sent.lock().expect("lock").remove(cid) {
                            let _ = latencies
                                .lock()
                                .expect("lock")
                                .record((now - t0).as_micros().max(1) as u64);
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        })
    }
}

/// Posts `total` commands of `tenant`, one every 5 ms, noting each one's send
/// time in `sent`; returns how many posts failed.
async fn post_commands(
    env: &Env,
    tenant: &str,
    total: u64,
    sent: &Mutex<HashMap<String, Instant>>,
) -> u64 {
    post_commands_to(&env.http, &env.base, tenant, total, sent).await
}

/// `post_commands` to the scriptd at `base`.
async fn post_commands_to(
    http: &reqwest::Client,
    base: &str,
    tenant: &str,
    total: u64,
    sent: &Mutex<HashMap<String, Instant>>,
) -> u64 {
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let mut posts = Vec::new();
    for _ in 0..total {
        tick.tick().await;
        let cid = uuid::Uuid::now_v7().to_string();
        let body = json!({ "command": "Contacts.UpsertAndLink.v1", "correlationId": cid, "actor": { "userId": "u" } }).to_string();
        let req = http
            .post(format!("{base}/commands"))
            .bearer_auth("bench")
            .header("x-tenant-id", tenant)
            .header("content-type", "application/json")
            .body(body);
        sent.lock().expect("lock").insert(cid, Instant::now());
        posts.push(tokio::spawn(async move {
            req.send().await.is_ok_and(|r| r.status() == 202)
        }));
    }
    let mut failed = 0;
    for p in posts {
        if !p.await.unwrap_or(false) {
            failed += 1;
        }
    }
    failed
}

/// Opens one SSE session over a raw socket; returns a task that resolves with
/// the instant the first `Bench.Fanout.v1` arrives.
async fn sse_session(addr: &str) -> Result<tokio::task::JoinHandle<Option<Instant>>> {
    let mut sock = tokio::net::TcpStream::connect(addr).await?;
    let req = format!(
        "GET /events/stream?tenantId=bench-fan&access_token=bench HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    );
    sock.write_all(req.as_bytes()).await?;
    let mut buf = vec![0u8; 2048];
    let n = sock.read(&mut buf).await?;
    if !String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200") {
        bail!(
            "SSE session refused: {}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    Ok(tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => {
                    if String::from_utf8_lossy(&buf[..n]).contains("Bench.Fanout.v1") {
                        return Some(Instant::now());
                    }
                }
            }
        }
    }))
}

async fn sse_fanout(env: &Env, args: &Args) -> Result<Row> {
    eprintln!("sse-fanout: opening {} sessions", args.sessions);
    let addr = env.base.trim_start_matches("http://").to_string();
    let (before, _) = env.rss();
    let mut sessions = Vec::with_capacity(args.sessions);
    for chunk in (0..args.sessions).collect::<Vec<_>>().chunks(200) {
        let opened = futures::future::join_all(chunk.iter().map(|_| sse_session(&addr))).await;
        for s in opened {
            sessions.push(s?);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (with_sessions, _) = env.rss();
    let per_session = (with_sessions.saturating_sub(before)) as f64 * 1024.0 / args.sessions as f64;
    eprintln!("sse-fanout: publishing one event");
    let t0 = Instant::now();
    let event = actors::domain::NewEvent {
        tenant_id: "bench-fan".into(),
        name: "Bench.Fanout.v1".into(),
        correlation_id: None,
        success: true,
        payload: json!({}),
    };
    let db = actors::store::Db::connect(&env.db_conn, 1, 1, Duration::from_secs(5))?;
    let client = db.write().await?;
    actors::store::events::append(&client, &[event], chrono::Utc::now()).await?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut missed = 0;
    for s in sessions {
        match tokio::time::timeout(Duration::from_secs(30), s).await {
            Ok(Ok(Some(t))) => {
                let _ = hist.record((t - t0).as_micros().max(1) as u64);
            }
            _ => missed += 1,
        }
    }
    Ok(Row {
        scenario: "sse-fanout".into(),
        rps: None,
        p50: Some(hist.value_at_quantile(0.5) as f64 / 1000.0),
        p99: Some(hist.value_at_quantile(0.99) as f64 / 1000.0),
        pgbench: None,
        peak_rss_kib: Some(with_sessions),
        note: format!(
            "{} sessions, max {:.1} ms, {missed} missed, {:.1} KiB RSS per session",
            args.sessions,
            hist.max() as f64 / 1000.0,
            per_session / 1024.0
        ),
        ..Default::default()
    })
}

/// What serializing event appends costs: pgbench appending one event per
/// transaction through `scriptd_append_events` (advisory lock, so ids become
/// visible in commit order) against the same insert and NOTIFY without the lock.
async fn event_append(env: &Env, args: &Args) -> Result<Row> {
    eprintln!("event-append: pgbench, serialized vs not");
    let locked = "SELECT scriptd_append_events(ARRAY['bench-ev'], ARRAY['Bench.Event.v1'], ARRAY[NULL::text], ARRAY[true], ARRAY['{}'::jsonb], now());\n".to_string();
    let unlocked = "INSERT INTO events (tenant_id, name, correlation_id, success, payload, occurred_at) VALUES ('bench-ev', 'Bench.Event.v1', NULL, true, '{}', now());\nSELECT pg_notify('scriptd_events', currval('events_id_seq')::text);\n".to_string();
    let with_lock = pgbench(env, args, "event-append-locked", &locked)?;
    let without = pgbench(env, args, "event-append-unlocked", &unlocked)?;
    Ok(Row {
        scenario: "event-append".into(),
        pgbench: Some(with_lock),
        note: format!(
            "pgbench only: {with_lock:.0} appends/s serialized, {without:.0}/s without the lock ({:.0}% of it)",
            100.0 * with_lock / without
        ),
        ..Row::default()
    })
}

async fn audit_depth(env: &Env, args: &Args) -> Result<Row> {
    eprintln!(
        "audit-depth: first page of 50 on 1,000 and {} rows, and a page half-way down",
        args.deep_rows
    );
    let median = |path: String| async move {
        let mut conn = RawConn::new(env.base.trim_start_matches("http://"));
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        for i in 0..300 {
            let t0 = Instant::now();
            if conn.send("GET", &path, b"").await != 200 {
                bail!("GET {path} failed");
            }
            if i >= 50 {
                let _ = hist.record(t0.elapsed().as_micros().max(1) as u64);
            }
        }
        Ok::<f64, anyhow::Error>(hist.value_at_quantile(0.5) as f64 / 1000.0)
    };
    let shallow = median(format!("/scripts/{}/audit?limit=50", script_id(SHALLOW))).await?;
    let deep = median(format!("/scripts/{}/audit?limit=50", script_id(DEEP))).await?;
    // A cursor half-way down the deep script's trail, made as the API makes them.
    let db = env.sql().await?;
    let row = db
        .query_one(
            "SELECT created_at, id FROM script_audit_logs WHERE script_id = $1::text::uuid \
             ORDER BY created_at DESC, id DESC OFFSET $2 LIMIT 1",
            &[&script_id(DEEP), &((args.deep_rows / 2) as i64)],
        )
        .await?;
    let key = actors::domain::Key::time(row.get(0), row.get(1));
    let filters = scriptd::http::cursor::filter_hash(&["audit", &script_id(DEEP)]);
    let cursor = scriptd::http::cursor::encode(key, &filters);
    let middle = median(format!(
        "/scripts/{}/audit?limit=50&cursor={cursor}",
        script_id(DEEP)
    ))
    .await?;
    Ok(Row {
        scenario: "audit-depth".into(),
        p50: Some(deep),
        note: format!(
            "p50 {shallow:.2} ms at 1,000 rows, {deep:.2} ms at {} rows (ratio {:.2}); {middle:.2} ms for the page after row {}",
            args.deep_rows,
            deep / shallow,
            args.deep_rows / 2
        ),
        ..Row::default()
    })
}

/// A minimal HTTP/1.1 keep-alive client: the load generator shares two cores
/// with scriptd and PostgreSQL, so it must cost as little as possible.
struct RawConn {
    addr: String,
    sock: Option<tokio::net::TcpStream>,
    buf: Vec<u8>,
}

impl RawConn {
    fn new(addr: &str) -> Self {
        RawConn {
            addr: addr.to_string(),
            sock: None,
            buf: Vec::with_capacity(16 * 1024),
        }
    }

    /// Sends one request; returns the status (0 on an I/O error).
    async fn send(&mut self, method: &str, path: &str, body: &[u8]) -> u16 {
        match self.try_send(method, path, body).await {
            Ok(status) => status,
            Err(_) => {
                self.sock = None;
                0
            }
        }
    }

    async fn try_send(&mut self, method: &str, path: &str, body: &[u8]) -> std::io::Result<u16> {
        if self.sock.is_none() {
            let s = tokio::net::TcpStream::connect(&self.addr).await?;
            s.set_nodelay(true)?;
            self.sock = Some(s);
        }
        let sock = self.sock.as_mut().expect("connected");
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer bench\r\nx-tenant-id: {TENANT}\r\n",
            self.addr
        )
        .into_bytes();
        if !body.is_empty() {
            req.extend_from_slice(
                format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n",
                    body.len()
                )
                .as_bytes(),
            );
        }
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(body);
        sock.write_all(&req).await?;
        self.buf.clear();
        let header_end = loop {
            let mut chunk = [0u8; 8192];
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = std::str::from_utf8(&self.buf[..header_end]).unwrap_or_default();
        let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while self.buf.len() < header_end + length {
            let mut chunk = [0u8; 8192];
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        Ok(status)
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let wanted: Option<Vec<String>> = args
        .only
        .as_ref()
        .map(|s| s.split(',').map(|x| x.trim().to_string()).collect());
    let want = |name: &str| wanted.as_ref().is_none_or(|w| w.iter().any(|x| x == name));
    let dir = std::env::temp_dir().join(format!("scriptd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let env = start(&args, &dir).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (idle_rss, _) = env.rss();
    load_data(&env, args.deep_rows).await?;
    let _ = env.post("/healthz", "").send().await;

    let mut rows = Vec::new();
    for name in SCENARIOS {
        if want(name) {
            rows.extend(run_scenario(name, &env, &args).await?);
        }
    }
    compare_dispatchers(&mut rows);
    print_report(&args, &rows, idle_rss);
    drop(env);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Every scenario, in the order they run and print.
const SCENARIOS: [&str; 15] = [
    "version-hot",
    "version-spread",
    "vars",
    "vars-stream",
    "vars-stream-10",
    "vars-stream-1k",
    "http-floor",
    "read",
    "command-to-event",
    "command-full",
    "command-bus",
    "event-append",
    "audit-depth",
    "diff-5k",
    "sse-fanout",
];

/// The bus at full rate as a share of the in-process dispatcher.
fn compare_dispatchers(rows: &mut [Row]) {
    let rate = |rows: &[Row], name: &str| rows.iter().find(|r| r.scenario == name)?.rps;
    if let (Some(inproc), Some(bus)) = (rate(rows, "command-full"), rate(rows, "command-bus-full"))
    {
        if let Some(r) = rows.iter_mut().find(|r| r.scenario == "command-bus-full") {
            r.note += &format!("; {:.2}× command-full", bus / inproc);
        }
    }
}

async fn run_scenario(name: &str, env: &Env, args: &Args) -> Result<Vec<Row>> {
    if name == "command-bus" {
        return bus::command_bus(env, args).await;
    }
    let row = match name {
        "command-full" => bus::command_full(env, args).await,
        "version-hot" => version_hot(env, args).await,
        "version-spread" => version_spread(env, args).await,
        "vars" => vars(env, args).await,
        "vars-stream" => stream::vars_stream(env, args).await,
        "vars-stream-1k" => stream::vars_stream_1k(env, args).await,
        "vars-stream-10" => stream::vars_stream_10(env, args).await,
        "http-floor" => http_floor(env, args).await,
        "read" => read(env, args).await,
        "command-to-event" => command_to_event(env, args).await,
        "event-append" => event_append(env, args).await,
        "audit-depth" => audit_depth(env, args).await,
        "diff-5k" => history::diff_5k(env, args).await,
        "sse-fanout" => sse_fanout(env, args).await,
        other => bail!("unknown scenario {other}"),
    }?;
    Ok(vec![row])
}

/// One row of a Markdown table.
fn table_row(cells: &[String]) -> String {
    format!("| {} |", cells.join(" | "))
}

/// The heading line, the results table, the CPU table and the idle RSS.
fn print_report(args: &Args, rows: &[Row], idle_rss: u64) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        .unwrap_or_default();
    println!(
        "\nscriptd-bench {} — {} cores ({cpu}), {}s per scenario after {}s warm-up, {} connections\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        args.duration,
        args.warmup,
        args.connections
    );
    println!("| scenario | scriptd req/s | p50 ms | p99 ms | pgbench tps | ratio | scriptd peak RSS MiB | notes |");
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        println!("{}", table_row(&r.results_cells()));
    }
    println!("\nCPU per request (µs of CPU time, during the measured window):\n");
    println!("| scenario | scriptd | PostgreSQL | load generator | total | pgbench: PostgreSQL | pgbench: client | pgbench total |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows.iter().filter(|r| r.cpu_us.is_some()) {
        println!("{}", table_row(&r.cpu_cells()));
    }
    println!("\nscriptd idle RSS: {:.1} MiB", idle_rss as f64 / 1024.0);
}
