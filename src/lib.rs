//! scriptd: the HTTP edge around the `actors` core. Each layer calls only the
//! one below it: `routes` (one module per resource) use `http` (middleware,
//! auth, extractors, errors, idempotency, cursors) and `dto` (the wire
//! format), and reach the core only through its services.

pub mod demo;
pub mod dto;
pub mod embedded;
pub mod http;
pub mod openapi;
pub mod routes;
pub mod settings;
pub mod startup;
pub mod telemetry;

pub use settings::Settings;

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit the binary was built from ("unknown" outside a checkout).
pub const GIT_COMMIT: &str = env!("SCRIPTD_GIT_COMMIT");
/// `0.1.0 (commit 1a2b3c4d5e6f)`: what `scriptd --version` prints.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SCRIPTD_GIT_COMMIT"),
    ")"
);
pub use startup::Application;
