//! The one error type of the HTTP edge. Every 4xx and 5xx leaves scriptd as
//! `{ "code", "message", "details"? }`.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use actors::ErrorCode;

use serde::Serialize;
use serde_json::{json, Value};

/// Defines `Code` from the one table of the contract: each error code with
/// its status and its string.
macro_rules! codes {
    ($($code:ident = $status:literal $text:literal,)*) => {
        /// The error codes of the HTTP contract.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Code {
            $($code,)*
        }

        impl Code {
            pub const ALL: &'static [Code] = &[$(Code::$code,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Code::$code => $text,)*
                }
            }

            pub fn status(self) -> StatusCode {
                let status = match self {
                    $(Code::$code => $status,)*
                };
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
        }
    };
}

codes! {
    ValidationFailed = 400 "VALIDATION_FAILED",
    MalformedJson = 400 "MALFORMED_JSON",
    TenantRequired = 400 "TENANT_REQUIRED",
    TenantMismatch = 400 "TENANT_MISMATCH",
    Unauthorized = 401 "UNAUTHORIZED",
    Forbidden = 403 "FORBIDDEN",
    NotFound = 404 "NOT_FOUND",
    MethodNotAllowed = 405 "METHOD_NOT_ALLOWED",
    RequestTimeout = 408 "REQUEST_TIMEOUT",
    SlugTaken = 409 "SLUG_TAKEN",
    InvalidStatusTransition = 409 "INVALID_STATUS_TRANSITION",
    NoActiveVersion = 409 "NO_ACTIVE_VERSION",
    ScriptArchived = 409 "SCRIPT_ARCHIVED",
    RunFinished = 409 "RUN_FINISHED",
    IdempotencyKeyInUse = 409 "IDEMPOTENCY_KEY_IN_USE",
    VersionConflict = 409 "VERSION_CONFLICT",
    MergeConflict = 409 "MERGE_CONFLICT",
    CorrelationIdTaken = 409 "CORRELATION_ID_TAKEN",
    CommandFinal = 409 "COMMAND_FINAL",
    PreconditionFailed = 412 "PRECONDITION_FAILED",
    PayloadTooLarge = 413 "PAYLOAD_TOO_LARGE",
    UnsupportedMediaType = 415 "UNSUPPORTED_MEDIA_TYPE",
    IdempotencyKeyReused = 422 "IDEMPOTENCY_KEY_REUSED",
    RateLimited = 429 "RATE_LIMITED",
    Internal = 500 "INTERNAL",
    Unavailable = 503 "UNAVAILABLE",
}

impl From<ErrorCode> for Code {
    fn from(code: ErrorCode) -> Self {
        match code {
            ErrorCode::NotFound => Code::NotFound,
            ErrorCode::SlugTaken => Code::SlugTaken,
            ErrorCode::InvalidStatusTransition => Code::InvalidStatusTransition,
            ErrorCode::NoActiveVersion => Code::NoActiveVersion,
            ErrorCode::ScriptArchived => Code::ScriptArchived,
            ErrorCode::RunFinished => Code::RunFinished,
            ErrorCode::IdempotencyKeyInUse => Code::IdempotencyKeyInUse,
            ErrorCode::IdempotencyKeyReused => Code::IdempotencyKeyReused,
            ErrorCode::VersionConflict => Code::VersionConflict,
            ErrorCode::MergeConflict => Code::MergeConflict,
            ErrorCode::CorrelationIdTaken => Code::CorrelationIdTaken,
            ErrorCode::PreconditionFailed => Code::PreconditionFailed,
            ErrorCode::CommandFinal => Code::CommandFinal,
            ErrorCode::Busy => Code::Unavailable,
        }
    }
}

/// The code that stands for a bare status (responses not produced by scriptd's
/// own handlers: unknown routes, wrong methods, framework rejections): the
/// first code of the table with that status, else the class's catch-all.
pub fn code_for_status(status: StatusCode) -> Code {
    if let Some(code) = Code::ALL.iter().find(|c| c.status() == status) {
        return *code;
    }
    if status.is_client_error() {
        Code::ValidationFailed
    } else {
        Code::Internal
    }
}

/// One invalid field.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The body every error response carries.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"code": "VALIDATION_FAILED", "message": "the request is invalid",
    "details": {"fields": [{"field": "slug", "message": "must match ^[a-z0-9]+(-[a-z0-9]+)*$"}]}}))]
pub struct ErrorBody {
    /// One of the contract's error codes, e.g. `NOT_FOUND`.
    pub code: String,
    /// A human sentence; never internals.
    pub message: String,
    /// Optional structure, e.g. `{ "fields": [ { "field", "message" } ] }`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

/// Marks a response whose body is already in the contract's error shape, so the
/// error-shaping middleware leaves it alone.
#[derive(Clone, Copy)]
pub struct ShapedError;

/// What a handler answers.
pub type ApiResult = Result<actix_web::HttpResponse, ApiError>;

#[derive(Debug)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    pub details: Option<Value>,
    pub retry_after: Option<u64>,
    /// The cause, for the log only.
    pub source: Option<anyhow::Error>,
    /// Echoed as `Correlation-Id` when the response leaves without the middleware.
    pub correlation_id: Option<String>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)?;
        if let Some(src) = &self.source {
            write!(f, " ({src:#})")?;
        }
        Ok(())
    }
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            details: None,
            retry_after: None,
            source: None,
            correlation_id: None,
        }
    }

    pub fn with_correlation_id(mut self, id: &str) -> Self {
        self.correlation_id = Some(id.to_string());
        self
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn validation(fields: Vec<FieldError>) -> Self {
        let message = match fields.as_slice() {
            [one] => format!("invalid {}: {}", one.field, one.message),
            _ => format!("{} fields are invalid", fields.len()),
        };
        ApiError::new(Code::ValidationFailed, message).with_details(json!({ "fields": fields }))
    }

    pub fn field(field: &str, message: impl Into<String>) -> Self {
        ApiError::validation(vec![FieldError::new(field, message)])
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(Code::Unauthorized, message)
    }

    pub fn not_found(what: &str) -> Self {
        ApiError::new(Code::NotFound, format!("{what} not found"))
    }

    pub fn internal(source: anyhow::Error) -> Self {
        ApiError {
            source: Some(source),
            ..ApiError::new(Code::Internal, "internal error")
        }
    }

    pub fn unavailable(source: anyhow::Error) -> Self {
        ApiError {
            source: Some(source),
            retry_after: Some(1),
            ..ApiError::new(
                Code::Unavailable,
                "service temporarily unavailable, retry later",
            )
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code.as_str().to_string(),
            message: self.message.clone(),
            details: self.details.clone(),
        }
    }
}

impl From<actors::Error> for ApiError {
    fn from(err: actors::Error) -> Self {
        match err {
            actors::Error::Rejected {
                code,
                message,
                details,
            } => ApiError {
                code: code.into(),
                message,
                details,
                retry_after: (code == ErrorCode::Busy).then_some(1),
                source: None,
                correlation_id: None,
            },
            actors::Error::Unavailable(e) => ApiError::unavailable(e),
            actors::Error::Unexpected(e) => ApiError::internal(e),
        }
    }
}

impl From<actix::MailboxError> for ApiError {
    fn from(err: actix::MailboxError) -> Self {
        ApiError::unavailable(anyhow::anyhow!("actor mailbox: {err}"))
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code.status()
    }

    fn error_response(&self) -> HttpResponse {
        match self.code {
            Code::Internal => tracing::error!(error = %self, "request failed"),
            Code::Unavailable => tracing::warn!(error = %self, "request failed"),
            _ => tracing::debug!(error = %self, "request rejected"),
        }
        let mut res = HttpResponse::build(self.status_code());
        if self.code == Code::Unauthorized {
            res.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        }
        if let Some(id) = &self.correlation_id {
            res.insert_header(("correlation-id", id.as_str()));
        }
        if let Some(secs) = self.retry_after {
            res.insert_header((header::RETRY_AFTER, secs));
        }
        let mut res = res.json(self.body());
        res.extensions_mut().insert(ShapedError);
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_the_status_of_the_contract() {
        for code in Code::ALL {
            let status = code.status();
            assert!(status.is_client_error() || status.is_server_error());
            if status.is_client_error()
                && status != StatusCode::BAD_REQUEST
                && status != StatusCode::CONFLICT
            {
                assert_eq!(code_for_status(status), *code, "{code:?}");
            }
        }
        assert_eq!(Code::IdempotencyKeyReused.status().as_u16(), 422);
        assert_eq!(Code::PreconditionFailed.status().as_u16(), 412);
        assert_eq!(
            code_for_status(StatusCode::IM_A_TEAPOT),
            Code::ValidationFailed
        );
        assert_eq!(
            code_for_status(StatusCode::BAD_REQUEST),
            Code::ValidationFailed
        );
        assert_eq!(code_for_status(StatusCode::BAD_GATEWAY), Code::Internal);
    }
}
