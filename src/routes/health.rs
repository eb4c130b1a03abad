//! Liveness, readiness and the OpenAPI document: the routes without auth.

use std::time::Duration;

use actix_web::{get, web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use crate::http::error::{ApiError, ApiResult, ErrorBody};
use crate::http::state::State;

/// The serialized OpenAPI document, served at `GET /openapi.json`.
pub struct OpenApiJson(pub String);

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"status": "ok", "version": "0.1.0", "commit": "1a2b3c4d5e6f"}))]
pub struct StatusBody {
    /// Always `ok`.
    pub status: &'static str,
    /// The scriptd version.
    pub version: &'static str,
    /// The git commit it was built from (`unknown` when built outside a checkout).
    pub commit: &'static str,
}

/// Liveness: 200 while the process runs, with the build.
#[utoipa::path(tag = "operations", responses((status = 200, description = "The process is running", body = StatusBody))
)]
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(StatusBody {
        status: "ok",
        version: crate::VERSION,
        commit: crate::GIT_COMMIT,
    })
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"status": "ok", "bus": "connected"}))]
pub struct ReadyBody {
    /// Always `ok`.
    pub status: &'static str,
    /// The NATS connection: `connected`, `disconnected` (commands wait in the
    /// outbox meanwhile) or `off` (no `bus.url`). Readiness does not depend on it.
    #[schema(pattern = "^(connected|disconnected|off)$")]
    pub bus: &'static str,
}

/// Readiness: 200 when the database answers; 503 when it does not, and from the
/// moment shutdown begins. The bus state is shown, not required.
#[utoipa::path(tag = "operations", responses(
        (status = 200, description = "Ready to serve", body = ReadyBody),
        (status = 503, description = "Database unreachable or shutting down (`UNAVAILABLE`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait")))
    ))]
#[get("/readyz")]
pub async fn readyz(state: State) -> ApiResult {
    if !state.is_accepting() {
        return Err(ApiError::unavailable(anyhow::anyhow!("shutting down")));
    }
    let limit = Duration::from_millis(state.settings.database.connect_timeout_ms);
    match tokio::time::timeout(limit, state.services.ping()).await {
        Ok(Ok(())) => Ok(HttpResponse::Ok().json(ReadyBody {
            status: "ok",
            bus: state.services.bus_state().as_str(),
        })),
        Ok(Err(e)) => Err(ApiError::unavailable(
            anyhow::Error::new(e).context("readiness check"),
        )),
        Err(_) => Err(ApiError::unavailable(anyhow::anyhow!(
            "readiness check timed out"
        ))),
    }
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(tag = "operations", responses((status = 200, description = "The OpenAPI document", content_type = "application/json"))
)]
#[get("/openapi.json")]
pub async fn openapi_json(doc: web::Data<OpenApiJson>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(doc.0.clone())
}
