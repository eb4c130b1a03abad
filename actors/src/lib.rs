//! The core of scriptd: no HTTP types, no status codes, no OpenAPI. Each
//! layer calls only the one below it:
//!
//! - `service`: one door per aggregate, the only API the edge calls;
//! - the actors (`keyed`, `script`, `run`, `outbox`, `hub`, `sse`) and the
//!   `workers` they share;
//! - `store`: all SQL;
//! - `domain`: parsed newtypes, records, rules, errors.

pub mod bus;
pub mod domain;
pub mod hub;
pub mod keyed;
pub mod outbox;
pub mod read_cache;
pub mod run;
pub mod script;
pub mod service;
pub mod sse;
pub mod store;
pub mod workers;

pub use domain::{Error, ErrorCode, Result};
