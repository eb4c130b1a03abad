//! What every handler can reach: settings, the pool, the authenticator, the actors.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_web::{web, HttpRequest};
use deadpool_postgres::Pool;

use crate::auth::Authenticator;
use crate::error::ApiError;
use crate::settings::Settings;

pub struct AppState {
    pub settings: Arc<Settings>,
    pub pool: Pool,
    pub auth: Authenticator,
    pub scripts: actors::scripts::Scripts,
    pub runs: actors::runs::Runs,
    pub hub: actix::Addr<actors::events::EventHub>,
    pub hub_stats: std::sync::Arc<actors::events::hub::HubStats>,
    /// The outbox (None without a dispatcher); `poll_once` for tests.
    pub outbox: Option<actors::outbox::Outbox>,
    pub publisher: actors::events::EventPublisher,
    pub hub_meta: std::sync::Arc<actors::registry::ActorMeta>,
    pub outbox_meta: Option<std::sync::Arc<actors::registry::ActorMeta>>,
    pub rate_limits: Option<crate::ratelimit::RateLimits>,
    pub metrics: crate::metrics::Metrics,
    /// Replay pages read at once, process-wide (a quarter of the pool).
    pub replays: Arc<tokio::sync::Semaphore>,
    /// False from the moment shutdown begins: `/readyz` answers 503 at once.
    pub accepting: AtomicBool,
}

impl AppState {
    pub fn of(req: &HttpRequest) -> Result<&AppState, ApiError> {
        req.app_data::<web::Data<AppState>>()
            .map(|d| d.get_ref())
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("application state missing")))
    }

    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    pub fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::SeqCst);
    }
}

pub type State = web::Data<AppState>;

/// The pool of one HTTP worker thread, for the reads its handlers make: its
/// connections are driven by the same thread, so a read does not hop threads.
pub struct ReadPool(pub Pool);

/// A pooled connection from the worker's read pool.
pub struct Db(pub deadpool_postgres::Object);

impl actix_web::FromRequest for Db {
    type Error = ApiError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let pool = req
            .app_data::<web::Data<ReadPool>>()
            .map(|p| p.0.clone())
            .or_else(|| {
                req.app_data::<web::Data<AppState>>()
                    .map(|s| s.pool.clone())
            });
        // (Tests that build an app without the worker pools use the shared one.)
        Box::pin(async move {
            let pool =
                pool.ok_or_else(|| ApiError::internal(anyhow::anyhow!("no database pool")))?;
            let client = pool.get().await.map_err(actors::Error::from)?;
            Ok(Db(client))
        })
    }
}
