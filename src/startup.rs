//! `Application::build(settings)`: the core's services (migrations, actors,
//! listener), then the HTTP server.

use std::net::TcpListener;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use actix_cors::Cors;
use actix_web::dev::{ResourceDef, Server, ServerHandle};
use actix_web::middleware::{from_fn, Condition};
use actix_web::{web, App, HttpServer};
use actors::bus::BusConfig;
use actors::outbox::OutboxConfig;
use actors::service::{Config as ServicesConfig, Dispatching, Services};
use actors::sse::SessionConfig;
use actors::workers::dispatcher::{DevDispatcher, Dispatcher};
use anyhow::Context;
use secrecy::ExposeSecret;
use utoipa_actix_web::AppExt;

use crate::http::auth::Authenticator;
use crate::http::error::{ApiError, Code};
use crate::http::extract;
use crate::http::metrics::Metrics;
use crate::http::middleware::request_context;
use crate::http::ratelimit::{rate_limit, RateLimits};
use crate::http::state::{AppState, State};
use crate::routes::health::OpenApiJson;
use crate::settings::{AuthMode, DispatcherKind, Settings};

pub struct Application {
    port: u16,
    server: Server,
    state: State,
}

/// Headers a browser may read from a cross-origin response.
const EXPOSED_HEADERS: [&str; 6] = [
    "etag",
    "location",
    "correlation-id",
    "retry-after",
    "idempotent-replayed",
    "idempotency-ttl",
];

/// How long a bus handler has to answer an attempt.
fn completion_timeout(s: &Settings) -> Duration {
    Duration::try_from_secs_f64(s.outbox.completion_timeout_secs)
        .unwrap_or(Duration::from_secs(300))
}

/// `[bus]` as the core takes it (`None` when `bus.url` is empty).
pub fn bus_config(s: &Settings, client_name: &str) -> anyhow::Result<Option<BusConfig>> {
    let url = s.bus.url.expose_secret();
    if url.trim().is_empty() {
        return Ok(None);
    }
    anyhow::ensure!(
        s.outbox.completion_timeout_secs > 0.0,
        "outbox.completion_timeout_secs must be above 0"
    );
    // Commands and completions outlive every attempt of a command.
    let attempts = s.outbox.max_attempts.max(1);
    let retention = completion_timeout(s)
        .saturating_mul(attempts)
        .max(Duration::from_secs(3600));
    let file = &s.bus.credentials_file;
    Ok(Some(BusConfig {
        url: url.to_string(),
        credentials_file: (!file.as_os_str().is_empty()).then(|| file.clone()),
        subject_prefix: s.bus.subject_prefix.clone(),
        stream_prefix: s.bus.stream_prefix.clone(),
        replicas: s.bus.replicas,
        retention,
        client_name: client_name.to_string(),
    }))
}

/// The development dispatcher with the configured delays.
pub fn dev_dispatcher(s: &Settings) -> DevDispatcher {
    DevDispatcher {
        min_delay: Duration::from_millis(s.outbox.dev_delay_min_ms),
        max_delay: Duration::from_millis(s.outbox.dev_delay_max_ms),
    }
}

/// The core's configuration from the settings.
fn services_config(s: &Settings, dispatcher: Dispatching) -> anyhow::Result<ServicesConfig> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let i = &s.idempotency;
    Ok(ServicesConfig {
        database_url: s.database.url.expose_secret().to_string(),
        pool_size: s.database.pool_size,
        connect_timeout: Duration::from_millis(s.database.connect_timeout_ms),
        startup_wait: Duration::from_secs(s.database.startup_wait_secs),
        read_pool_size: (s.database.pool_size / workers).max(2),
        actor_idle: Duration::from_secs(s.actors.idle_secs),
        read_cache_bytes: s.actors.read_cache_bytes,
        run_queue_max: s.actors.run_queue_max,
        var_write_statements: s.actors.var_write_statements,
        session_buffer: s.events.session_buffer,
        retention_hours: s.events.retention_hours,
        sessions: SessionConfig {
            keepalive: Duration::from_secs(s.events.keepalive_secs.max(1)),
            slow_reader: Duration::from_millis(s.events.slow_reader_ms.max(1)),
        },
        idempotency_ttl: chrono::Duration::milliseconds((i.ttl_hours * 3_600_000.0) as i64),
        idempotency_lease: chrono::Duration::seconds(i.inflight_lease_secs as i64),
        dispatcher,
        bus: bus_config(s, "scriptd")?,
        outbox: OutboxConfig {
            poll_interval: Duration::from_millis(s.outbox.poll_interval_ms),
            lease: Duration::from_secs(s.outbox.lease_secs),
            max_attempts: s.outbox.max_attempts.max(1),
            backoff_base: Duration::from_millis(s.outbox.backoff_base_ms),
            backoff_max: Duration::from_millis(s.outbox.backoff_max_ms),
            completion_timeout: completion_timeout(s),
        },
        outbox_autorun: s.outbox.autorun,
    })
}

/// Dev auth accepts any token: refuse it on a public address unless asked.
fn check_dev_auth(settings: &Settings) -> anyhow::Result<()> {
    if settings.auth.mode == AuthMode::Dev {
        if !is_loopback(&settings.http.bind) && !settings.auth.allow_dev_on_public {
            anyhow::bail!(
                "auth.mode is \"dev\" (any token is accepted) and http.bind is {}, not a loopback address; \
                 set auth.mode = \"jwt\", bind 127.0.0.1, or set auth.allow_dev_on_public = true",
                settings.http.bind
            );
        }
        tracing::warn!("auth.mode is \"dev\": any non-empty bearer token is accepted");
    }
    Ok(())
}

/// The HTTP server: per worker, the services with their own read pool, CORS,
/// the middleware and the routes.
fn http_server(state: State, listener: TcpListener) -> anyhow::Result<Server> {
    let routes = web::Data::new(RouteTable::from_openapi(&crate::openapi::collected()));
    let openapi = web::Data::new(OpenApiJson(crate::openapi::document_json()));
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let shutdown_timeout = state.settings.http.shutdown_timeout_secs;
    let app_state = state.clone();
    let server = HttpServer::new(move || {
        // Built per worker: its read pool's connections open lazily on that
        // worker's thread.
        let services = web::Data::new(app_state.services.for_worker());
        let origins = app_state.settings.http.cors_origins.clone();
        let mut cors = Cors::default()
            .allow_any_method()
            .allow_any_header()
            .expose_headers(EXPOSED_HEADERS)
            .max_age(3600);
        for origin in &origins {
            cors = cors.allowed_origin(origin);
        }
        App::new()
            .into_utoipa_app()
            .app_data(app_state.clone())
            .app_data(services)
            .app_data(openapi.clone())
            .app_data(routes.clone())
            .app_data(web::QueryConfig::default().error_handler(extract::query_error))
            .app_data(web::PathConfig::default().error_handler(extract::path_error))
            .configure(crate::routes::configure)
            .default_service(web::to(not_found))
            .map(|app| {
                app.service(reference_page())
                    .service(web::redirect("/docs", "/docs/"))
                    .wrap(from_fn(rate_limit))
                    .wrap(Condition::new(!origins.is_empty(), cors))
                    .wrap(from_fn(request_context))
            })
            .into_app()
    })
    .workers(workers)
    .listen(listener)?
    .disable_signals()
    .shutdown_timeout(shutdown_timeout)
    .run();
    Ok(server)
}

/// `GET /docs/`: Swagger UI on `/openapi.json`, its assets embedded in the
/// binary (served by scriptd, works offline).
fn reference_page() -> utoipa_swagger_ui::SwaggerUi {
    utoipa_swagger_ui::SwaggerUi::new("/docs/{_:.*}")
        .config(utoipa_swagger_ui::Config::new(["/openapi.json"]).try_it_out_enabled(true))
}

fn is_loopback(bind: &str) -> bool {
    bind == "localhost"
        || bind
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let dispatcher = match settings.outbox.dispatcher() {
            DispatcherKind::Dev => Dispatching::InProcess(Arc::new(dev_dispatcher(&settings))),
            DispatcherKind::Bus => Dispatching::Bus,
            DispatcherKind::None => Dispatching::None,
        };
        Self::build_dispatching(settings, dispatcher).await
    }

    /// `build` with another command dispatcher in process (or none).
    pub async fn build_with_dispatcher(
        settings: Settings,
        dispatcher: Option<Arc<dyn Dispatcher>>,
    ) -> anyhow::Result<Self> {
        let dispatcher = dispatcher.map_or(Dispatching::None, Dispatching::InProcess);
        Self::build_dispatching(settings, dispatcher).await
    }

    async fn build_dispatching(
        settings: Settings,
        dispatcher: Dispatching,
    ) -> anyhow::Result<Self> {
        let auth = Authenticator::new(&settings.auth)?;
        check_dev_auth(&settings)?;
        anyhow::ensure!(
            !settings.database.url.expose_secret().is_empty(),
            "database.url is empty"
        );
        let services = Services::start(services_config(&settings, dispatcher)?)
            .await
            .context("starting the services (migrations, bus)")?;
        let listener = TcpListener::bind((settings.http.bind.as_str(), settings.http.port))
            .with_context(|| format!("binding {}:{}", settings.http.bind, settings.http.port))?;
        let port = listener.local_addr()?.port();
        let state = web::Data::new(AppState {
            rate_limits: RateLimits::new(&settings.rate_limit),
            metrics: Metrics::new()?,
            settings: Arc::new(settings),
            auth,
            services,
            accepting: AtomicBool::new(true),
            run_streams: Default::default(),
        });
        let server = http_server(state.clone(), listener)?;
        spawn_housekeeping(state.clone());
        tracing::info!(
            port,
            "scriptd listening on http://{}:{port}",
            state.settings.http.bind
        );
        Ok(Application {
            port,
            server,
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> State {
        self.state.clone()
    }

    /// A handle that stops the server gracefully: readiness turns 503 at once,
    /// the listener closes, in-flight requests get `http.shutdown_timeout_secs`.
    pub fn stopper(&self) -> Stopper {
        Stopper {
            handle: self.server.handle(),
            state: self.state.clone(),
        }
    }

    /// Stops on SIGTERM or Ctrl-C (the binary; tests use `stopper()`).
    pub fn stop_on_signals(&self) {
        let stopper = self.stopper();
        actix_web::rt::spawn(async move {
            wait_for_signal().await;
            stopper.stop().await;
        });
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

#[derive(Clone)]
pub struct Stopper {
    handle: ServerHandle,
    state: State,
}

impl Stopper {
    pub async fn stop(&self) {
        self.state.stop_accepting();
        // Open SSE streams would hold the graceful stop: end them first.
        self.state.services.events.close_all().await;
        // Runner streams ack what committed and close with 1001.
        let limit = Duration::from_secs(self.state.settings.http.shutdown_timeout_secs);
        self.state.run_streams.close_all(limit).await;
        self.handle.stop(true).await;
    }
}

/// SIGTERM, SIGINT (Ctrl-C) or SIGHUP (the terminal closed): each stops
/// scriptd gracefully, and with it the embedded PostgreSQL.
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let kinds = [
        SignalKind::terminate(),
        SignalKind::interrupt(),
        SignalKind::hangup(),
    ];
    let mut streams = Vec::new();
    for kind in kinds {
        match signal(kind) {
            Ok(s) => streams.push((kind, s)),
            Err(e) => {
                tracing::error!(error = %e, signal = kind.as_raw_value(), "cannot listen for a signal")
            }
        }
    }
    if streams.is_empty() {
        std::future::pending::<()>().await;
    }
    let any = futures::future::select_all(streams.iter_mut().map(|(_, s)| Box::pin(s.recv())));
    let (_, index, _) = any.await;
    tracing::info!(
        signal = streams[index].0.as_raw_value(),
        "shutdown signal received"
    );
}

/// Every route's path pattern and its methods, taken from the OpenAPI document
/// (which the routes themselves build), to tell 405 from 404.
pub struct RouteTable(Vec<(ResourceDef, Vec<String>)>);

impl RouteTable {
    pub fn from_openapi(doc: &utoipa::openapi::OpenApi) -> Self {
        let routes = doc
            .paths
            .paths
            .iter()
            .map(|(path, item)| {
                let mut methods: Vec<String> = Vec::new();
                let ops = [
                    ("GET", &item.get),
                    ("POST", &item.post),
                    ("PUT", &item.put),
                    ("PATCH", &item.patch),
                    ("DELETE", &item.delete),
                ];
                for (name, op) in ops {
                    if op.is_some() {
                        methods.push(name.to_string());
                    }
                }
                (ResourceDef::new(path.as_str()), methods)
            })
            .collect();
        RouteTable(routes)
    }

    /// The methods allowed on `path`, or `None` when no route has that path.
    pub fn methods_for(&self, path: &str) -> Option<Vec<String>> {
        let mut found: Option<Vec<String>> = None;
        for (def, methods) in &self.0 {
            if def.is_match(path) {
                found
                    .get_or_insert_with(Vec::new)
                    .extend(methods.iter().cloned());
            }
        }
        found
    }
}

/// The default service: 405 with `Allow` when the path exists with other
/// methods, else 404.
async fn not_found(
    req: actix_web::HttpRequest,
    routes: web::Data<RouteTable>,
) -> Result<actix_web::HttpResponse, ApiError> {
    match routes.methods_for(req.path()) {
        Some(methods) => {
            let err = ApiError::new(
                Code::MethodNotAllowed,
                format!("method {} is not allowed on {}", req.method(), req.path()),
            );
            let mut res = actix_web::ResponseError::error_response(&err);
            if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&methods.join(", ")) {
                res.headers_mut().insert(actix_web::http::header::ALLOW, v);
            }
            Ok(res)
        }
        _ => Err(ApiError::new(
            Code::NotFound,
            format!("no route for {} {}", req.method(), req.path()),
        )),
    }
}

/// Every minute: forget idle rate-limit keys, purge expired idempotency keys.
fn spawn_housekeeping(state: State) {
    actix_web::rt::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            if let Some(limits) = &state.rate_limits {
                limits.housekeeping();
            }
            match state.services.idempotency.purge().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(purged = n, "expired idempotency keys purged"),
                Err(e) => tracing::warn!(error = %e, "purging idempotency keys failed"),
            }
        }
    });
}

/// `scriptd dev-handler`: the reference handler over the bus, until SIGTERM
/// or Ctrl-C.
pub async fn dev_handler(settings: &Settings) -> anyhow::Result<()> {
    let config = bus_config(settings, "scriptd dev-handler")?
        .context("scriptd dev-handler needs bus.url (SCRIPTD__BUS__URL)")?;
    let bus = actors::bus::Bus::connect(config).await?;
    tokio::select! {
        result = actors::bus::dev_handler::run(bus, dev_dispatcher(settings)) => result,
        _ = wait_for_signal() => {
            tracing::info!("dev-handler stopped");
            Ok(())
        }
    }
}

/// `scriptd migrate`: apply the pending migrations and return.
pub async fn migrate_only(settings: &Settings) -> anyhow::Result<()> {
    actors::service::migrate(
        settings.database.url.expose_secret(),
        Duration::from_millis(settings.database.connect_timeout_ms),
        Duration::from_secs(settings.database.startup_wait_secs),
    )
    .await
    .context("applying migrations")?;
    tracing::info!("migrations applied");
    Ok(())
}
