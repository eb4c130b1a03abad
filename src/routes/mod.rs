//! One module per resource; this is the one place that registers routes.

use utoipa_actix_web::service_config::ServiceConfig;

pub mod admin;
pub mod commands;
pub mod events;
pub mod health;
pub mod run_stream;
pub mod runs;
pub mod scripts;
pub mod versions;

pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(health::healthz)
        .service(health::readyz)
        .service(health::openapi_json)
        .service(scripts::create_script)
        .service(scripts::list_scripts)
        .service(scripts::get_script)
        .service(scripts::patch_script)
        .service(versions::create_version)
        .service(versions::publish_version)
        .service(versions::list_versions)
        .service(versions::get_version)
        .service(versions::diff_versions)
        .service(versions::list_audit)
        .service(commands::post_command)
        .service(commands::get_command)
        .service(commands::complete_command)
        .service(events::stream)
        .service(runs::start_run)
        .service(runs::upsert_vars)
        .service(runs::finish_run)
        .service(runs::list_runs)
        .service(runs::get_run)
        .service(run_stream::run_stream)
        .service(admin::list_actors)
        .service(admin::metrics);
}
