//! Dispatchers hand a claimed command to whatever executes it.

use std::time::Duration;

use futures::future::BoxFuture;
use rand::Rng;
use serde_json::json;

use crate::domain::command::{Command, Completion};

/// Executes a command; `Err` is retried with backoff until the attempts run out.
pub trait Dispatcher: Send + Sync + 'static {
    fn dispatch(&self, command: &Command) -> BoxFuture<'static, Result<Completion, String>>;
}

/// The development dispatcher: waits a random time, then completes every
/// command with the contract's fake completion event.
pub struct DevDispatcher {
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl DevDispatcher {
    /// A random delay between the two bounds.
    pub fn delay(&self) -> Duration {
        let (lo, hi) = (self.min_delay, self.max_delay.max(self.min_delay));
        if hi > lo {
            rand::rng().random_range(lo..=hi)
        } else {
            lo
        }
    }

    pub fn completion_for(command: &str) -> Completion {
        match command {
            "Contacts.UpsertAndLink.v1" => Completion {
                event: "Contacts.Upserted.v1".into(),
                success: true,
                payload: json!({ "contacts": [{ "role": "applicant", "contactId": "cnt_1" }] }),
            },
            other => Completion {
                event: "Command.Completed.v1".into(),
                success: true,
                payload: json!({ "command": other }),
            },
        }
    }
}

impl Dispatcher for DevDispatcher {
    fn dispatch(&self, command: &Command) -> BoxFuture<'static, Result<Completion, String>> {
        let delay = self.delay();
        let completion = Self::completion_for(&command.command);
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok(completion)
        })
    }
}
