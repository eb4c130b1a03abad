//! The command outbox: commands accepted at the edge, executed asynchronously.

pub mod actor;
pub mod dispatcher;
pub mod model;

pub use actor::{accept, Accepted, Outbox, OutboxActor, OutboxConfig};
pub use dispatcher::{DevDispatcher, Dispatcher};
