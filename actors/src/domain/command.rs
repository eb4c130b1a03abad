//! Commands in the outbox.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::domain::{CommandName, NewEvent};

status_enum!(CommandStatus {
    Pending = "PENDING",
    Processing = "PROCESSING",
    Completed = "COMPLETED",
    Failed = "FAILED",
});

/// A command as accepted at the edge.
#[derive(Debug, Clone)]
pub struct NewCommand {
    pub tenant_id: String,
    pub command: CommandName,
    pub correlation_id: Uuid,
    pub actor_user_id: String,
    pub created_by_id: String,
    pub context: Value,
    pub payload: Value,
}

/// A row of `command_outbox`.
#[derive(Debug, Clone)]
pub struct Command {
    pub id: Uuid,
    pub tenant_id: String,
    pub command: String,
    pub correlation_id: Uuid,
    pub actor_user_id: String,
    pub context: Value,
    pub payload: Value,
    pub status: CommandStatus,
    pub attempts: i32,
    /// The completion event, once the command completed or failed.
    pub result: Option<Completed>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What a dispatcher produces: the completion event of a command.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub event: String,
    pub success: bool,
    pub payload: Value,
}

/// A command's completion event as recorded on its row.
#[derive(Debug, Clone, PartialEq)]
pub struct Completed {
    pub event: NewEvent,
    pub occurred_at: DateTime<Utc>,
}

/// What `POST /commands` answers.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub command_id: Uuid,
    pub correlation_id: Uuid,
}

impl CommandStatus {
    /// COMPLETED and FAILED never change again.
    pub fn is_final(self) -> bool {
        matches!(self, CommandStatus::Completed | CommandStatus::Failed)
    }
}

/// A handler's answer to a command (over the bus or `POST …/complete`), or a
/// deadline that passed (`Report::timed_out`).
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The completion event's name; absent: `Command.Completed.v1` /
    /// `Command.Failed.v1`.
    pub event: Option<String>,
    pub success: bool,
    pub payload: Value,
    pub error: Option<String>,
    /// A failed attempt to be retried after the backoff.
    pub retry: bool,
    /// The attempt answered, when the handler says.
    pub attempt: Option<i32>,
}

/// The error of an attempt whose deadline passed.
pub const TIMED_OUT: &str = "timed out";

impl Report {
    /// What a passed deadline counts as: a failed, retried attempt.
    pub fn timed_out(attempt: i32) -> Self {
        Report {
            event: None,
            success: false,
            payload: Value::Object(Default::default()),
            error: Some(TIMED_OUT.into()),
            retry: true,
            attempt: Some(attempt),
        }
    }
}

/// Why a report changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// The command is already COMPLETED or FAILED.
    Final,
    /// A failure or retry for an attempt that is no longer current.
    Stale,
}

/// What a report does to a command.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Final: COMPLETED or FAILED, with the event to stream.
    Finish {
        status: CommandStatus,
        completion: Completion,
        error: Option<String>,
    },
    /// Back to PENDING, published again after the backoff of this attempt.
    Retry {
        error: String,
        attempt: i32,
    },
    Ignore(Ignored),
}

/// The rule of the contract: a success for any attempt completes a command
/// that is not final; a failure or retry must answer the current attempt (a
/// failure without `attempt` applies to whatever is current); a retry past
/// the last attempt fails the command with `Command.Failed.v1`.
pub fn decide(command: &Command, report: &Report, max_attempts: u32) -> Outcome {
    if command.status.is_final() {
        return Outcome::Ignore(Ignored::Final);
    }
    if report.success {
        return Outcome::Finish {
            status: CommandStatus::Completed,
            completion: Completion {
                event: report
                    .event
                    .clone()
                    .unwrap_or_else(|| "Command.Completed.v1".into()),
                success: true,
                payload: report.payload.clone(),
            },
            error: None,
        };
    }
    let current = command.status == CommandStatus::Processing
        && report.attempt.is_none_or(|a| a == command.attempts);
    let error = report
        .error
        .clone()
        .unwrap_or_else(|| "failed by the handler".into());
    if report.retry {
        if !current {
            return Outcome::Ignore(Ignored::Stale);
        }
        if command.attempts.max(0) as u32 >= max_attempts {
            return Outcome::Finish {
                status: CommandStatus::Failed,
                completion: Completion {
                    event: "Command.Failed.v1".into(),
                    success: false,
                    payload: serde_json::json!({ "command": command.command, "error": error }),
                },
                error: Some(error),
            };
        }
        return Outcome::Retry {
            error,
            attempt: command.attempts,
        };
    }
    if report.attempt.is_some() && !current {
        return Outcome::Ignore(Ignored::Stale);
    }
    Outcome::Finish {
        status: CommandStatus::Failed,
        completion: Completion {
            event: report
                .event
                .clone()
                .unwrap_or_else(|| "Command.Failed.v1".into()),
            success: false,
            payload: report.payload.clone(),
        },
        error: Some(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn command(status: CommandStatus, attempts: i32) -> Command {
        let now = Utc::now();
        Command {
            id: Uuid::nil(),
            tenant_id: "t".into(),
            command: "A.B.v1".into(),
            correlation_id: Uuid::nil(),
            actor_user_id: "u".into(),
            context: json!({}),
            payload: json!({}),
            status,
            attempts,
            result: None,
            last_error: None,
            created_at: now,
            updated_at: now,
        }
    }

    fn report(success: bool, retry: bool, attempt: Option<i32>) -> Report {
        Report {
            event: None,
            success,
            payload: json!({"k": 1}),
            error: Some("boom".into()),
            retry,
            attempt,
        }
    }

    fn status_of(o: &Outcome) -> Option<(CommandStatus, &str)> {
        match o {
            Outcome::Finish {
                status, completion, ..
            } => Some((*status, completion.event.as_str())),
            _ => None,
        }
    }

    #[test]
    fn final_commands_ignore_everything() {
        for s in [CommandStatus::Completed, CommandStatus::Failed] {
            for r in [report(true, false, None), report(false, true, Some(1))] {
                assert_eq!(
                    decide(&command(s, 1), &r, 5),
                    Outcome::Ignore(Ignored::Final)
                );
            }
        }
    }

    #[test]
    fn a_success_for_any_attempt_completes() {
        use CommandStatus::*;
        for (s, a) in [(Processing, 2), (Pending, 2)] {
            let o = decide(&command(s, a), &report(true, false, Some(1)), 5);
            assert_eq!(status_of(&o), Some((Completed, "Command.Completed.v1")));
        }
    }

    #[test]
    fn failures_and_retries_must_answer_the_current_attempt() {
        use CommandStatus::*;
        let stale = Outcome::Ignore(Ignored::Stale);
        assert_eq!(
            decide(&command(Processing, 2), &report(false, true, Some(1)), 5),
            stale
        );
        assert_eq!(
            decide(&command(Processing, 2), &report(false, false, Some(1)), 5),
            stale
        );
        // Timed out already (back to PENDING): a late retry is stale.
        assert_eq!(
            decide(&command(Pending, 2), &report(false, true, Some(2)), 5),
            stale
        );
        assert_eq!(
            decide(&command(Processing, 2), &report(false, true, None), 5),
            Outcome::Retry {
                error: "boom".into(),
                attempt: 2
            }
        );
        // Without an attempt, a failure applies to whatever is current.
        let o = decide(&command(Pending, 0), &report(false, false, None), 5);
        assert_eq!(status_of(&o), Some((Failed, "Command.Failed.v1")));
    }

    #[test]
    fn the_last_retry_fails_the_command() {
        let o = decide(
            &command(CommandStatus::Processing, 5),
            &Report::timed_out(5),
            5,
        );
        match o {
            Outcome::Finish {
                status,
                completion,
                error,
            } => {
                assert_eq!(status, CommandStatus::Failed);
                assert_eq!(completion.event, "Command.Failed.v1");
                assert_eq!(
                    completion.payload,
                    json!({"command": "A.B.v1", "error": "timed out"})
                );
                assert_eq!(error.as_deref(), Some("timed out"));
            }
            other => panic!("{other:?}"),
        }
    }
}
