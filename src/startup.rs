//! `Application::build(settings)`: pool, migrations, actors, listener, server.

use std::net::TcpListener;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use std::sync::Arc;

use actix::Actor;
use actix_cors::Cors;
use actix_web::dev::{ResourceDef, Server, ServerHandle};
use actix_web::middleware::{from_fn, Condition};
use actix_web::{web, App, HttpServer};
use actors::events::hub::HubStats;
use actors::events::{EventAppender, EventHub, EventPublisher};
use actors::listener;
use actors::outbox::{DevDispatcher, Dispatcher, Outbox, OutboxActor, OutboxConfig};
use actors::registry::ActorMeta;
use anyhow::Context;
use secrecy::ExposeSecret;
use utoipa_actix_web::AppExt;

use crate::auth::Authenticator;
use crate::error::ApiError;
use crate::extract;
use crate::metrics::Metrics;
use crate::middleware::request_context;
use crate::openapi::OpenApiJson;
use crate::ratelimit::{rate_limit, RateLimits};
use crate::settings::{AuthMode, Settings};
use crate::state::{AppState, ReadPool, State};

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

fn is_loopback(bind: &str) -> bool {
    bind == "localhost"
        || bind
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let dispatcher: Option<Arc<dyn Dispatcher>> = settings.outbox.dev_worker.then(|| {
            Arc::new(DevDispatcher {
                min_delay: Duration::from_millis(settings.outbox.dev_delay_min_ms),
                max_delay: Duration::from_millis(settings.outbox.dev_delay_max_ms),
            }) as Arc<dyn Dispatcher>
        });
        Self::build_with_dispatcher(settings, dispatcher).await
    }

    /// `build` with another command dispatcher (or none).
    pub async fn build_with_dispatcher(
        settings: Settings,
        dispatcher: Option<Arc<dyn Dispatcher>>,
    ) -> anyhow::Result<Self> {
        let auth = Authenticator::new(&settings.auth)?;
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

        let url = settings.database.url.expose_secret();
        anyhow::ensure!(!url.is_empty(), "database.url is empty");
        let pool = actors::store::connect(
            url,
            settings.database.pool_size,
            Duration::from_millis(settings.database.connect_timeout_ms),
        )?;
        actors::store::migrate(&pool)
            .await
            .context("applying migrations")?;

        let listener = TcpListener::bind((settings.http.bind.as_str(), settings.http.port))
            .with_context(|| format!("binding {}:{}", settings.http.bind, settings.http.port))?;
        let port = listener.local_addr()?.port();

        let shutdown_timeout = settings.http.shutdown_timeout_secs;
        let scripts = actors::scripts::Scripts::new(
            pool.clone(),
            Duration::from_secs(settings.actors.idle_secs),
        );
        let hub_stats = Arc::new(HubStats::default());
        let hub_meta = ActorMeta::singleton();
        let hub = EventHub::new(
            pool.clone(),
            settings.events.session_buffer,
            settings.events.retention_hours,
            hub_stats.clone(),
            hub_meta.clone(),
        )
        .start();
        let outbox = dispatcher.map(|d| {
            Outbox::new(
                pool.clone(),
                d,
                OutboxConfig {
                    poll_interval: Duration::from_millis(settings.outbox.poll_interval_ms),
                    lease: Duration::from_secs(settings.outbox.lease_secs),
                    max_attempts: settings.outbox.max_attempts.max(1),
                    backoff_base: Duration::from_millis(settings.outbox.backoff_base_ms),
                    backoff_max: Duration::from_millis(settings.outbox.backoff_max_ms),
                },
            )
        });
        let outbox_meta = outbox
            .as_ref()
            .filter(|_| settings.outbox.autorun)
            .map(|_| ActorMeta::singleton());
        let outbox_actor = outbox
            .as_ref()
            .zip(outbox_meta.as_ref())
            .map(|(o, m)| OutboxActor::new(o.clone(), m.clone()).start());
        actix_web::rt::spawn(listener::run(
            url.to_string(),
            listener::Targets {
                hub: hub.clone().recipient(),
                hub_meta: hub_meta.clone(),
                outbox: outbox_actor
                    .zip(outbox_meta.clone())
                    .map(|(a, m)| (a.recipient(), m)),
            },
        ));
        let rate_limits = RateLimits::new(&settings.rate_limit);
        let metrics = Metrics::new()?;
        let publisher = EventPublisher::new(EventAppender::start(pool.clone()));
        let runs = actors::runs::Runs::new(
            pool.clone(),
            publisher.clone(),
            Duration::from_secs(settings.actors.idle_secs),
            settings.actors.run_queue_max,
            settings.actors.var_write_statements,
        );
        let settings_pool_size = settings.database.pool_size;
        let state = web::Data::new(AppState {
            settings: std::sync::Arc::new(settings),
            pool,
            auth,
            scripts,
            runs,
            hub,
            hub_stats,
            outbox,
            publisher,
            hub_meta,
            outbox_meta,
            rate_limits,
            metrics,
            replays: Arc::new(tokio::sync::Semaphore::new((settings_pool_size / 4).max(1))),
            accepting: AtomicBool::new(true),
        });
        let doc = crate::openapi::document();
        let routes = web::Data::new(RouteTable::from_openapi(&doc));
        let openapi = web::Data::new(OpenApiJson(
            doc.to_pretty_json()
                .context("serializing the OpenAPI document")?,
        ));

        let app_state = state.clone();
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let read_pool_size = (state.settings.database.pool_size / workers).max(2);
        let db_url = state.settings.database.url.clone();
        let connect_timeout = Duration::from_millis(state.settings.database.connect_timeout_ms);
        let server = HttpServer::new(move || {
            // Built per worker; its connections open lazily on that worker's thread.
            // (The URL was already parsed once above; should that fail here, reads
            // share the application pool.)
            let reads = web::Data::new(ReadPool(
                actors::store::connect(db_url.expose_secret(), read_pool_size, connect_timeout)
                    .unwrap_or_else(|_| app_state.pool.clone()),
            ));
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
                .app_data(reads)
                .app_data(openapi.clone())
                .app_data(routes.clone())
                .app_data(web::QueryConfig::default().error_handler(extract::query_error))
                .app_data(web::PathConfig::default().error_handler(extract::path_error))
                .configure(crate::routes::configure)
                .default_service(web::to(not_found))
                .map(|app| {
                    app.wrap(from_fn(rate_limit))
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
            tracing::info!("shutdown signal received");
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
        let _ = self.state.hub.send(actors::events::hub::CloseAll).await;
        self.handle.stop(true).await;
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
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
                actors::ErrorCode::MethodNotAllowed,
                format!("method {} is not allowed on {}", req.method(), req.path()),
            );
            let mut res = actix_web::ResponseError::error_response(&err);
            if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&methods.join(", ")) {
                res.headers_mut().insert(actix_web::http::header::ALLOW, v);
            }
            Ok(res)
        }
        _ => Err(ApiError::new(
            actors::ErrorCode::NotFound,
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
            match actors::idempotency::purge(&state.pool).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(purged = n, "expired idempotency keys purged"),
                Err(e) => tracing::warn!(error = %e, "purging idempotency keys failed"),
            }
        }
    });
}

/// `scriptd migrate`: apply the pending migrations and return.
pub async fn migrate_only(settings: &Settings) -> anyhow::Result<()> {
    let pool = actors::store::connect(
        settings.database.url.expose_secret(),
        1,
        Duration::from_millis(settings.database.connect_timeout_ms),
    )?;
    actors::store::migrate(&pool)
        .await
        .context("applying migrations")?;
    tracing::info!("migrations applied");
    Ok(())
}
