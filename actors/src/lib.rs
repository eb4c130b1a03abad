//! The core of scriptd: domain types, the actors that own scripts, runs, the
//! outbox and the event hub, and the SQL store they use. Knows nothing of HTTP.

pub mod domain;
pub mod error;
pub mod events;
pub mod idempotency;
pub mod listener;
pub mod outbox;
pub mod pagination;
pub mod registry;
pub mod runs;
pub mod scripts;
pub mod store;

pub use error::{Error, ErrorCode, Result};
