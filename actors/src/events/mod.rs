//! Events: the table, the publisher, and the per-process hub that streams them.

pub mod appender;
pub mod hub;
pub mod model;
pub mod publisher;

pub use appender::EventAppender;
pub use hub::EventHub;
pub use model::{NewEvent, StoredEvent};
pub use publisher::EventPublisher;
