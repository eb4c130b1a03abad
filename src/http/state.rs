//! What every handler can reach: the settings, the authenticator, the rate
//! limits, the metrics, and the services of the core.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_web::{web, HttpRequest};
use actors::service::Services;

use crate::http::auth::Authenticator;
use crate::http::error::ApiError;
use crate::http::metrics::Metrics;
use crate::http::ratelimit::RateLimits;
use crate::settings::Settings;

pub struct AppState {
    pub settings: Arc<Settings>,
    pub auth: Authenticator,
    /// The process-wide services (each HTTP worker also has a copy with its
    /// own read pool: the `Svc` extractor).
    pub services: Services,
    pub rate_limits: Option<RateLimits>,
    pub metrics: Metrics,
    /// False from the moment shutdown begins: `/readyz` answers 503 at once.
    pub accepting: AtomicBool,
    /// The open runner streams (`GET /runs/:runId/stream`).
    pub run_streams: crate::http::run_streams::RunStreams,
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

/// The services as this HTTP worker thread reaches them (reads on its own
/// read pool, whose connections the same thread drives).
pub type Svc = web::Data<Services>;
