//! scriptd: the HTTP edge around the `actors` core. Each layer calls only the
//! one below it: `routes` (one module per resource) use `http` (middleware,
//! auth, extractors, errors, idempotency, cursors) and `dto` (the wire
//! format), and reach the core only through its services.

pub mod dto;
pub mod embedded;
pub mod http;
pub mod openapi;
pub mod routes;
pub mod settings;
pub mod startup;
pub mod telemetry;

pub use settings::Settings;
pub use startup::Application;
