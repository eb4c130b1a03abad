//! Domain errors. Every rejection carries one of the contract's error codes;
//! the HTTP edge maps codes to statuses in one table.

use serde::Serialize;
use serde_json::Value;

/// The error codes of the HTTP contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    ValidationFailed,
    MalformedJson,
    TenantRequired,
    TenantMismatch,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    SlugTaken,
    InvalidStatusTransition,
    NoActiveVersion,
    ScriptArchived,
    RunFinished,
    IdempotencyKeyInUse,
    VersionConflict,
    CorrelationIdTaken,
    PreconditionFailed,
    PayloadTooLarge,
    UnsupportedMediaType,
    /// The request body did not arrive within `http.body_timeout_secs`.
    RequestTimeout,
    IdempotencyKeyReused,
    RateLimited,
    Internal,
    Unavailable,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 24] = [
        ErrorCode::ValidationFailed,
        ErrorCode::MalformedJson,
        ErrorCode::TenantRequired,
        ErrorCode::TenantMismatch,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::SlugTaken,
        ErrorCode::InvalidStatusTransition,
        ErrorCode::NoActiveVersion,
        ErrorCode::ScriptArchived,
        ErrorCode::RunFinished,
        ErrorCode::IdempotencyKeyInUse,
        ErrorCode::VersionConflict,
        ErrorCode::CorrelationIdTaken,
        ErrorCode::PreconditionFailed,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::RequestTimeout,
        ErrorCode::IdempotencyKeyReused,
        ErrorCode::RateLimited,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ValidationFailed => "VALIDATION_FAILED",
            ErrorCode::MalformedJson => "MALFORMED_JSON",
            ErrorCode::TenantRequired => "TENANT_REQUIRED",
            ErrorCode::TenantMismatch => "TENANT_MISMATCH",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ErrorCode::SlugTaken => "SLUG_TAKEN",
            ErrorCode::InvalidStatusTransition => "INVALID_STATUS_TRANSITION",
            ErrorCode::NoActiveVersion => "NO_ACTIVE_VERSION",
            ErrorCode::ScriptArchived => "SCRIPT_ARCHIVED",
            ErrorCode::RunFinished => "RUN_FINISHED",
            ErrorCode::IdempotencyKeyInUse => "IDEMPOTENCY_KEY_IN_USE",
            ErrorCode::VersionConflict => "VERSION_CONFLICT",
            ErrorCode::CorrelationIdTaken => "CORRELATION_ID_TAKEN",
            ErrorCode::PreconditionFailed => "PRECONDITION_FAILED",
            ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorCode::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            ErrorCode::RequestTimeout => "REQUEST_TIMEOUT",
            ErrorCode::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::Unavailable => "UNAVAILABLE",
        }
    }
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

    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Rejected { code, .. } => *code,
            Error::Unavailable(_) => ErrorCode::Unavailable,
            Error::Unexpected(_) => ErrorCode::Internal,
        }
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(err: tokio_postgres::Error) -> Self {
        // A closed connection, an I/O failure or a connection-class SQLSTATE means
        // the database is (for now) unreachable: 503. Anything else is a bug or a
        // constraint we did not expect: 500.
        let io = std::error::Error::source(&err).is_some_and(|s| s.is::<std::io::Error>());
        let connection_class = err
            .code()
            .is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57P"));
        if err.is_closed() || io || connection_class {
            Error::Unavailable(err.into())
        } else {
            Error::Unexpected(err.into())
        }
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        match err {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => Error::Unavailable(other.into()),
        }
    }
}
