//! The test harness: one PostgreSQL per test run (the embedded launcher, or
//! DATABASE_URL), a migrated template database, and for each test a fresh copy
//! of it and a scriptd on port 0 over real HTTP.
#![allow(dead_code)] // helpers serve every test module; not each uses all

use std::future::Future;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use scriptd::embedded::{EmbeddedOptions, EmbeddedPostgres};
use scriptd::http::state::State;
use scriptd::startup::Stopper;
use scriptd::{Application, Settings};
use secrecy::SecretString;
use serde_json::Value;

pub const TENANT: &str = "t1";
pub const TOKEN: &str = "alice.token";

struct TestCluster {
    /// Connection string without dbname (embedded) or the DATABASE_URL.
    base: String,
    template: String,
    pg: Option<EmbeddedPostgres>,
    dir: Option<PathBuf>,
}

static CLUSTER: OnceLock<TestCluster> = OnceLock::new();

extern "C" fn stop_cluster_at_exit() {
    if let Some(c) = CLUSTER.get() {
        if let Some(pg) = &c.pg {
            let _ = pg.stop();
        }
        if let Some(dir) = &c.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `url` pointing at database `name` (URL or key=value form).
pub fn with_dbname(url: &str, name: &str) -> String {
    if let Some(rest) = url
        .strip_prefix("postgres://")
        .map(|r| ("postgres://", r))
        .or_else(|| {
            url.strip_prefix("postgresql://")
                .map(|r| ("postgresql://", r))
        })
    {
        let (scheme, rest) = rest;
        let (main, query) = match rest.split_once('?') {
            Some((m, q)) => (m, Some(q)),
            None => (rest, None),
        };
        let authority = main.split('/').next().unwrap_or_default();
        let mut out = format!("{scheme}{authority}/{name}");
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        out
    } else {
        format!("{url} dbname={name}")
    }
}

fn cluster() -> &'static TestCluster {
    CLUSTER.get_or_init(|| {
        let run = std::process::id();
        let (base, pg, dir) = match std::env::var("DATABASE_URL") {
            Ok(url) if !url.is_empty() => (url, None, None),
            _ => {
                let dir = std::env::temp_dir().join(format!("scriptd-tests-{run}"));
                let mut opts = EmbeddedOptions::new(dir.join("pg"));
                // Test data is throwaway: trade durability for speed (never in serve).
                for (k, v) in [
                    ("fsync", "off"),
                    ("synchronous_commit", "off"),
                    ("full_page_writes", "off"),
                    ("max_connections", "400"),
                ] {
                    opts.server_settings.push((k.into(), v.into()));
                }
                let pg = EmbeddedPostgres::start(&opts).expect("start the test PostgreSQL");
                let base = pg.connection_string("postgres");
                // key=value form: a later dbname overrides this one
                (base, Some(pg), Some(dir))
            }
        };
        // SAFETY: registering a plain extern "C" function.
        unsafe {
            libc::atexit(stop_cluster_at_exit);
        }
        let template = format!("scriptd_tpl_{run}");
        let maintenance = base.clone();
        let tpl = template.clone();
        // Migrate the template on a thread with its own runtime (tests run
        // inside a runtime, which cannot block on another).
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let admin = connect(&maintenance).await;
                admin
                    .batch_execute(&format!("CREATE DATABASE {tpl}"))
                    .await
                    .expect("create the template database");
                actors::service::migrate(
                    &with_dbname(&maintenance, &tpl),
                    Duration::from_secs(10),
                    Duration::ZERO,
                )
                .await
                .expect("migrate the template");
            });
        })
        .join()
        .expect("template setup");
        TestCluster {
            base,
            template,
            pg,
            dir,
        }
    })
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test PostgreSQL");
    tokio::spawn(conn);
    client
}

/// A fresh database copied from the migrated template; returns its URL.
pub async fn fresh_database() -> String {
    let c = cluster();
    let name = format!("t_{}", uuid::Uuid::now_v7().simple());
    let admin = connect(&c.base).await;
    admin
        .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {}", c.template))
        .await
        .expect("create the test database");
    with_dbname(&c.base, &name)
}

/// Settings for a test app against `db_url`.
pub fn test_settings(db_url: &str) -> Settings {
    let mut s = Settings::defaults().expect("default settings");
    s.http.port = 0;
    s.http.shutdown_timeout_secs = 1;
    s.database.url = SecretString::from(db_url.to_string());
    s.database.pool_size = 4;
    // Tests send bursts far above any sane limit; the rate-limit tests turn it on.
    s.rate_limit.enabled = false;
    s
}

pub struct TestApp {
    pub address: String,
    pub db_url: String,
    pub client: reqwest::Client,
    pub stopper: Stopper,
    pub state: State,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let db_url = fresh_database().await;
    spawn_app_on(&db_url, configure).await
}

/// A scriptd on an existing database (two apps may share one).
pub async fn spawn_app_on(db_url: &str, configure: impl FnOnce(&mut Settings)) -> TestApp {
    init_logs();
    let mut settings = test_settings(db_url);
    configure(&mut settings);
    let app = Application::build(settings).await.expect("build the app");
    run_app(app, db_url)
}

/// Runs a built app on a task; the handle the tests drive it by.
fn run_app(app: Application, db_url: &str) -> TestApp {
    let address = format!("http://127.0.0.1:{}", app.port());
    let stopper = app.stopper();
    let state = app.state();
    actix_web::rt::spawn(app.run_until_stopped());
    TestApp {
        address,
        db_url: db_url.to_string(),
        client: reqwest::Client::new(),
        stopper,
        state,
    }
}

fn init_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if std::env::var("TEST_LOG").is_ok() {
            scriptd::telemetry::init(scriptd::settings::LogFormat::Pretty);
        }
    });
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// A request with no headers at all.
    pub fn raw(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// A request with the default token and tenant.
    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.raw(method, path)
            .bearer_auth(TOKEN)
            .header("x-tenant-id", TENANT)
    }

    pub async fn get(&self, path: &str) -> Response {
        self.req(Method::GET, path).send().await.expect("request")
    }

    async fn with_body(&self, method: Method, path: &str, body: &Value) -> Response {
        self.req(method, path)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn post(&self, path: &str, body: &Value) -> Response {
        self.with_body(Method::POST, path, body).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Response {
        self.with_body(Method::PATCH, path, body).await
    }

    pub async fn db(&self) -> tokio_postgres::Client {
        connect(&self.db_url).await
    }
}

/// Asserts the contract's error shape and code; returns the body.
pub async fn assert_error(res: Response, status: u16, code: &str) -> Value {
    let got = res.status();
    let text = res.text().await.expect("body");
    assert_eq!(got, StatusCode::from_u16(status).unwrap(), "body: {text}");
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    assert_eq!(body["code"], code, "body: {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body
}

/// The JSON body of a response with the expected status.
pub async fn json_of(res: Response, status: u16) -> Value {
    let got = res.status();
    let text = res.text().await.expect("body");
    assert_eq!(got.as_u16(), status, "body: {text}");
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
}

/// The field names listed in a VALIDATION_FAILED body.
pub fn fields(body: &Value) -> Vec<String> {
    body["details"]["fields"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f["field"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `check` returns `Some`, polling, failing after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "condition not met within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A scriptd with another command dispatcher (or none).
pub async fn spawn_app_with_dispatcher(
    dispatcher: Option<std::sync::Arc<dyn actors::workers::dispatcher::Dispatcher>>,
    configure: impl FnOnce(&mut Settings),
) -> TestApp {
    init_logs();
    let db_url = fresh_database().await;
    let mut settings = test_settings(&db_url);
    configure(&mut settings);
    let app = Application::build_with_dispatcher(settings, dispatcher)
        .await
        .expect("build the app");
    run_app(app, &db_url)
}

/// One Server-Sent Event as received.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }

    pub fn id(&self) -> i64 {
        self.id.as_deref().unwrap_or("-1").parse().unwrap()
    }
}

/// A test SSE client: parses the stream on a task; `next` waits with a deadline.
pub struct SseClient {
    rx: tokio::sync::mpsc::UnboundedReceiver<Option<SseEvent>>,
    pub ended: bool,
}

impl SseClient {
    pub async fn connect(req: RequestBuilder) -> SseClient {
        use futures::StreamExt;
        let res = req.send().await.expect("connect the SSE stream");
        assert_eq!(res.status(), 200, "SSE status");
        assert!(res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        actix_web::rt::spawn(async move {
            let mut body = res.bytes_stream();
            let mut buf = String::new();
            while let Some(Ok(chunk)) = body.next().await {
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    let mut ev = SseEvent {
                        id: None,
                        event: "message".into(),
                        data: String::new(),
                    };
                    let mut any = false;
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("id:") {
                            ev.id = Some(v.trim().to_string());
                            any = true;
                        } else if let Some(v) = line.strip_prefix("event:") {
                            ev.event = v.trim().to_string();
                            any = true;
                        } else if let Some(v) = line.strip_prefix("data:") {
                            if !ev.data.is_empty() {
                                ev.data.push('\n');
                            }
                            ev.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                            any = true;
                        }
                    }
                    if any && tx.send(Some(ev)).is_err() {
                        return;
                    }
                }
            }
            let _ = tx.send(None);
        });
        SseClient { rx, ended: false }
    }

    /// The next event other than `ping`, within `deadline`; `None` when the stream ended.
    pub async fn next(&mut self, deadline: Duration) -> Option<SseEvent> {
        loop {
            let ev = self.next_any(deadline).await?;
            if ev.event != "ping" {
                return Some(ev);
            }
        }
    }

    /// The next event including pings.
    pub async fn next_any(&mut self, deadline: Duration) -> Option<SseEvent> {
        match tokio::time::timeout(deadline, self.rx.recv()).await {
            Ok(Some(Some(ev))) => Some(ev),
            Ok(_) => {
                self.ended = true;
                None
            }
            Err(_) => panic!("no SSE event within {deadline:?}"),
        }
    }

    /// Nothing (but pings) arrives within `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        let until = Instant::now() + quiet;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match tokio::time::timeout(left, self.rx.recv()).await {
                Err(_) => return,
                Ok(Some(Some(ev))) if ev.event == "ping" => {}
                Ok(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }
}

impl TestApp {
    /// An SSE stream of `tenant`, with extra query (e.g. `&correlationId=…`).
    pub async fn sse(&self, tenant: &str, query: &str) -> SseClient {
        SseClient::connect(
            self.raw(
                Method::GET,
                &format!("/events/stream?tenantId={tenant}{query}"),
            )
            .bearer_auth(TOKEN),
        )
        .await
    }

    pub fn outbox(&self) -> &actors::outbox::Outbox {
        self.state
            .services
            .commands
            .outbox()
            .expect("the app has an outbox")
    }
}

/// A scriptd binary running as its own process on an existing database (to
/// measure its memory, read its log, or kill it), on a free port.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub address: String,
    pub log: PathBuf,
}

impl ServerProcess {
    /// Starts `scriptd serve` on `db_url` with `env` (`SCRIPTD__…` keys) and
    /// waits until it listens.
    pub async fn start(db_url: &str, env: &[(&str, &str)]) -> ServerProcess {
        Self::start_on(db_url, 0, env).await
    }

    /// `start` on a given port (0: a free one).
    pub async fn start_on(db_url: &str, port: u16, env: &[(&str, &str)]) -> ServerProcess {
        let log = std::env::temp_dir().join(format!("scriptd-proc-{}.log", uuid::Uuid::now_v7()));
        let file = std::fs::File::create(&log).expect("create the log file");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_scriptd"));
        cmd.args(["serve", "--port", &port.to_string()])
            .env("DATABASE_URL", db_url)
            .env_remove("PORT")
            .env("RUST_LOG", "info")
            .env("SCRIPTD__LOG__FORMAT", "json")
            .env("SCRIPTD__RATE_LIMIT__ENABLED", "false")
            .env("SCRIPTD__OUTBOX__DEV_DELAY_MIN_MS", "0")
            .env("SCRIPTD__OUTBOX__DEV_DELAY_MAX_MS", "0")
            .stdout(std::process::Stdio::null())
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start scriptd");
        let port = eventually(Duration::from_secs(30), || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let port = text
                .split("listening on http://127.0.0.1:")
                .nth(1)
                .map(|rest| {
                    rest.chars()
                        .take_while(char::is_ascii_digit)
                        .collect::<String>()
                });
            async move { port.filter(|p| !p.is_empty()) }
        })
        .await;
        ServerProcess {
            child,
            address: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub fn port(&self) -> u16 {
        self.address
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap()
    }

    /// Resident memory in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

// ---------- request and answer shorthands ----------

/// Sends a request built by hand; a transport error fails the test.
pub async fn send(req: RequestBuilder) -> Response {
    req.send().await.expect("request")
}

/// Sends `req` and asserts the error shape and code (see `assert_error`).
pub async fn send_err(req: RequestBuilder, status: u16, code: &str) -> Value {
    assert_error(send(req).await, status, code).await
}

/// Sends `req` and returns its JSON body, asserting the status.
pub async fn send_json(req: RequestBuilder, status: u16) -> Value {
    json_of(send(req).await, status).await
}

/// A string field of a JSON value, owned.
pub fn str_of(v: &Value) -> String {
    v.as_str().expect("a string").to_string()
}

/// The `items` array of a list page.
pub fn items(page: &Value) -> &Vec<Value> {
    page["items"].as_array().expect("items")
}

/// The string field `key` of every element of `list`, in order.
pub fn strings(list: &Value, key: &str) -> Vec<String> {
    list.as_array()
        .expect("an array")
        .iter()
        .map(|v| str_of(&v[key]))
        .collect()
}

/// The integer field `key` of every element of `list`, in order.
pub fn numbers(list: &Value, key: &str) -> Vec<i64> {
    list.as_array()
        .expect("an array")
        .iter()
        .map(|v| v[key].as_i64().expect("a number"))
        .collect()
}

impl TestApp {
    /// A request with the default token and `tenant`.
    pub fn as_tenant(&self, method: Method, path: &str, tenant: &str) -> RequestBuilder {
        self.raw(method, path)
            .bearer_auth(TOKEN)
            .header("x-tenant-id", tenant)
    }

    /// A request with `token` and `tenant`.
    pub fn with_token(
        &self,
        method: Method,
        path: &str,
        token: &str,
        tenant: &str,
    ) -> RequestBuilder {
        self.raw(method, path)
            .bearer_auth(token)
            .header("x-tenant-id", tenant)
    }

    /// A request as the dev-mode admin (no tenant).
    pub fn admin(&self, method: Method, path: &str) -> RequestBuilder {
        self.raw(method, path).bearer_auth(ADMIN)
    }

    /// `GET path` as the dev-mode admin.
    pub async fn admin_get(&self, path: &str) -> Response {
        send(self.admin(Method::GET, path)).await
    }

    pub async fn get_json(&self, path: &str, status: u16) -> Value {
        json_of(self.get(path).await, status).await
    }

    pub async fn post_json(&self, path: &str, body: &Value, status: u16) -> Value {
        json_of(self.post(path, body).await, status).await
    }

    pub async fn patch_json(&self, path: &str, body: &Value, status: u16) -> Value {
        json_of(self.patch(path, body).await, status).await
    }

    pub async fn get_err(&self, path: &str, status: u16, code: &str) -> Value {
        assert_error(self.get(path).await, status, code).await
    }

    pub async fn post_err(&self, path: &str, body: &Value, status: u16, code: &str) -> Value {
        assert_error(self.post(path, body).await, status, code).await
    }

    pub async fn patch_err(&self, path: &str, body: &Value, status: u16, code: &str) -> Value {
        assert_error(self.patch(path, body).await, status, code).await
    }

    /// A 400 VALIDATION_FAILED to `GET path`.
    pub async fn get_invalid(&self, path: &str) -> Value {
        self.get_err(path, 400, "VALIDATION_FAILED").await
    }

    /// A 400 VALIDATION_FAILED to `POST path`.
    pub async fn post_invalid(&self, path: &str, body: &Value) -> Value {
        self.post_err(path, body, 400, "VALIDATION_FAILED").await
    }

    /// An SSE stream opened with a request built by hand from `query`
    /// (`tenantId=…&…`), with the default token.
    pub async fn sse_query(&self, query: &str) -> SseClient {
        SseClient::connect(self.stream_req(query).bearer_auth(TOKEN)).await
    }

    /// `GET /events/stream?{query}` with no headers.
    pub fn stream_req(&self, query: &str) -> RequestBuilder {
        self.raw(Method::GET, &format!("/events/stream?{query}"))
    }
}

pub const ADMIN: &str = "dev-admin";

// ---------- fixtures: scripts, versions, runs ----------

pub fn graph() -> Value {
    serde_json::json!({ "nodes": [{ "id": "n1" }], "edges": [] })
}

pub async fn create_script(app: &TestApp, slug: &str) -> Value {
    let body = serde_json::json!({ "name": format!("Script {slug}"), "slug": slug });
    app.post_json("/scripts", &body, 201).await
}

/// A new script's id.
pub async fn script_id(app: &TestApp, slug: &str) -> String {
    str_of(&create_script(app, slug).await["id"])
}

pub async fn create_version(app: &TestApp, id: &str) -> Value {
    let body = serde_json::json!({ "graphJson": graph() });
    app.post_json(&format!("/scripts/{id}/versions"), &body, 201)
        .await
}

/// `POST /scripts/{id}/versions/{version}/publish` with `{}`, answered 200.
pub async fn publish_version(app: &TestApp, id: &str, version: impl std::fmt::Display) -> Value {
    let path = format!("/scripts/{id}/versions/{version}/publish");
    app.post_json(&path, &serde_json::json!({}), 200).await
}

/// A script with a published version 1 (and an unpublished version 2).
pub async fn published_script(app: &TestApp, slug: &str) -> String {
    let id = script_id(app, slug).await;
    create_version(app, &id).await;
    create_version(app, &id).await;
    publish_version(app, &id, 1).await;
    id
}

pub async fn start_run(app: &TestApp, script: &str) -> String {
    let body = serde_json::json!({ "scriptId": script });
    str_of(&app.post_json("/runs", &body, 201).await["runId"])
}

pub async fn upsert(app: &TestApp, run: &str, items: Value) -> Response {
    app.post(&format!("/runs/{run}/vars"), &items).await
}

pub async fn finish(app: &TestApp, run: &str, status: &str) -> Response {
    let body = serde_json::json!({ "status": status });
    app.post(&format!("/runs/{run}/finish"), &body).await
}

/// Every request (another tenant's view of one resource) answers 404
/// NOT_FOUND, and the list route `list` shows that tenant nothing.
pub async fn assert_invisible(app: &TestApp, tenant: &str, reqs: Vec<RequestBuilder>, list: &str) {
    for req in reqs {
        send_err(req, 404, "NOT_FOUND").await;
    }
    let page = send_json(app.as_tenant(Method::GET, list, tenant), 200).await;
    assert_eq!(page["items"], serde_json::json!([]));
}

/// Sends every request at once; the answers in order.
pub async fn send_all(reqs: Vec<RequestBuilder>) -> Vec<Response> {
    futures::future::join_all(reqs.into_iter().map(send)).await
}

/// The first column of the one row `sql` answers.
pub async fn scalar<T>(
    db: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> T
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    db.query_one(sql, params).await.expect("query").get(0)
}

/// Turns rate limiting on with these rates (per second) and burst.
pub fn limit_rates(s: &mut Settings, per_tenant: u32, per_token: u32, burst: u32) {
    s.rate_limit.enabled = true;
    s.rate_limit.per_tenant_per_sec = per_tenant;
    s.rate_limit.per_token_per_sec = per_token;
    s.rate_limit.burst = burst;
}

/// JWT auth with the shared HS256 test secret.
pub fn jwt_auth(s: &mut Settings, secret: &str) {
    s.auth.mode = scriptd::settings::AuthMode::Jwt;
    s.auth.jwt_secret = secret.to_string().into();
}

// ---------- NATS ----------

/// A `nats-server` with JetStream for one test, on a free port with its own
/// store directory; stopped and started again on the same port and store.
/// The binary is `NATS_SERVER_BIN`, else `nats-server` on the PATH.
pub struct NatsServer {
    child: Option<std::process::Child>,
    pub port: u16,
    dir: PathBuf,
}

impl NatsServer {
    pub async fn start() -> NatsServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!("scriptd-nats-{}", uuid::Uuid::now_v7()));
        let mut nats = NatsServer {
            child: None,
            port,
            dir,
        };
        nats.spawn().await;
        nats
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let bin = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
        let child = std::process::Command::new(&bin)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("start {bin} (install nats-server, or set NATS_SERVER_BIN): {e}")
            });
        self.child = Some(child);
        let port = self.port;
        eventually(Duration::from_secs(10), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
        })
        .await;
    }

    /// Kills the server (SIGKILL: what a crash or a partition looks like).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and store (streams and consumers kept).
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// A client of this server, and its JetStream context.
    pub async fn client(&self) -> (async_nats::Client, async_nats::jetstream::Context) {
        let client = async_nats::connect(self.url())
            .await
            .expect("connect to NATS");
        let js = async_nats::jetstream::new(client.clone());
        (client, js)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Settings for a scriptd that dispatches over the bus at `nats`.
pub fn bus_settings(s: &mut Settings, nats: &NatsServer) {
    s.bus.url = SecretString::from(nats.url());
    s.outbox.dispatcher = Some(scriptd::settings::DispatcherKind::Bus);
}

/// `scriptd dev-handler` as its own process on `nats`, with no delay.
pub struct DevHandlerProcess {
    child: std::process::Child,
}

impl DevHandlerProcess {
    pub fn start(nats: &NatsServer) -> DevHandlerProcess {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_scriptd"))
            .arg("dev-handler")
            .env("SCRIPTD__BUS__URL", nats.url())
            .env("SCRIPTD__OUTBOX__DEV_DELAY_MIN_MS", "0")
            .env("SCRIPTD__OUTBOX__DEV_DELAY_MAX_MS", "0")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start scriptd dev-handler");
        DevHandlerProcess { child }
    }
}

impl Drop for DevHandlerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of one series of `/metrics` (name with its labels), as scraped.
pub async fn metric_value(app: &TestApp, series: &str) -> i64 {
    let text = app.admin_get("/metrics").await.text().await.unwrap();
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
}
