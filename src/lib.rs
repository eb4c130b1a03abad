//! scriptd: the HTTP edge (routes, middleware, auth, config, the embedded
//! PostgreSQL launcher) around the `actors` core.

pub mod auth;
pub mod embedded;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod metrics;
pub mod middleware;
pub mod openapi;
pub mod page;
pub mod ratelimit;
pub mod routes;
pub mod settings;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod tenant;
pub mod validation;

pub use settings::Settings;
pub use startup::Application;
