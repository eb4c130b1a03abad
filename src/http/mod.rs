//! HTTP itself: middleware, authentication, tenants, extractors, the error
//! table, rate limits, the one idempotent-handler helper, cursors, metrics,
//! and the state every handler reaches.

pub mod auth;
pub mod cursor;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod metrics;
pub mod middleware;
pub mod paths;
pub mod ratelimit;
pub mod run_streams;
pub mod state;
pub mod tenant;
pub mod validation;
