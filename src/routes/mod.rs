//! One module per resource; this is the one place that registers routes.

use utoipa_actix_web::service_config::ServiceConfig;

pub mod health;

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(health::healthz)
        .service(health::readyz)
        .service(health::openapi_json);
}
