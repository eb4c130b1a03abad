//! Domain errors: a refusal by a rule (with its code), the database out of
//! reach, or anything unexpected.

use serde_json::Value;

/// Why the domain refused a request. The edge maps each code to its status
/// and its string in one table (`src/http/error.rs`); codes that only HTTP
/// produces (malformed JSON, rate limits, …) live there, not here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    NotFound,
    SlugTaken,
    InvalidStatusTransition,
    NoActiveVersion,
    ScriptArchived,
    RunFinished,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    VersionConflict,
    CorrelationIdTaken,
    PreconditionFailed,
    /// A completion for a command that is already COMPLETED or FAILED.
    CommandFinal,
    /// A merging save whose edits conflict with the latest version's.
    MergeConflict,
    /// A bounded queue is full: retry shortly.
    Busy,
}

/// A failure of a domain operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request was understood and refused by a rule of the domain.
    #[error("{message}")]
    Rejected {
        code: ErrorCode,
        message: String,
        details: Option<Value>,
    },
    /// PostgreSQL could not be reached in time, or a bounded queue is full.
    #[error("service unavailable: {0}")]
    Unavailable(#[source] anyhow::Error),
    /// Anything else: a 500 whose cause goes to the log, never to the client.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn rejected(code: ErrorCode, message: impl Into<String>) -> Self {
        Error::Rejected {
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn rejected_with(code: ErrorCode, message: impl Into<String>, details: Value) -> Self {
        Error::Rejected {
            code,
            message: message.into(),
            details: Some(details),
        }
    }

    pub fn not_found(what: &str) -> Self {
        Error::rejected(ErrorCode::NotFound, format!("{what} not found"))
    }

    /// The code of a refusal (`None` for the other failures).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Rejected { code, .. } => Some(*code),
            _ => None,
        }
    }
}
