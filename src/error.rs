//! The one error type of the HTTP edge. Every 4xx and 5xx leaves scriptd as
//! `{ "code", "message", "details"? }`.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use actors::ErrorCode;
use serde::Serialize;
use serde_json::{json, Value};

/// The status of each error code: the single table of the contract.
pub fn status_of(code: ErrorCode) -> StatusCode {
    use ErrorCode::*;
    match code {
        ValidationFailed | MalformedJson | TenantRequired | TenantMismatch => {
            StatusCode::BAD_REQUEST
        }
        Unauthorized => StatusCode::UNAUTHORIZED,
        Forbidden => StatusCode::FORBIDDEN,
        NotFound => StatusCode::NOT_FOUND,
        MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        SlugTaken
        | InvalidStatusTransition
        | NoActiveVersion
        | ScriptArchived
        | RunFinished
        | IdempotencyKeyInUse
        | VersionConflict
        | CorrelationIdTaken => StatusCode::CONFLICT,
        PreconditionFailed => StatusCode::PRECONDITION_FAILED,
        PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
        RateLimited => StatusCode::TOO_MANY_REQUESTS,
        Internal => StatusCode::INTERNAL_SERVER_ERROR,
        Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The code that stands for a bare status (responses not produced by scriptd's
/// own handlers: unknown routes, wrong methods, framework rejections).
pub fn code_for_status(status: StatusCode) -> ErrorCode {
    match status.as_u16() {
        401 => ErrorCode::Unauthorized,
        403 => ErrorCode::Forbidden,
        404 => ErrorCode::NotFound,
        405 => ErrorCode::MethodNotAllowed,
        408 => ErrorCode::RequestTimeout,
        412 => ErrorCode::PreconditionFailed,
        413 => ErrorCode::PayloadTooLarge,
        415 => ErrorCode::UnsupportedMediaType,
        422 => ErrorCode::IdempotencyKeyReused,
        429 => ErrorCode::RateLimited,
        503 => ErrorCode::Unavailable,
        400..=499 => ErrorCode::ValidationFailed,
        _ => ErrorCode::Internal,
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

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
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
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
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
        ApiError::new(ErrorCode::ValidationFailed, message)
            .with_details(json!({ "fields": fields }))
    }

    pub fn field(field: &str, message: impl Into<String>) -> Self {
        ApiError::validation(vec![FieldError::new(field, message)])
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::Unauthorized, message)
    }

    pub fn not_found(what: &str) -> Self {
        ApiError::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    pub fn internal(source: anyhow::Error) -> Self {
        ApiError {
            source: Some(source),
            ..ApiError::new(ErrorCode::Internal, "internal error")
        }
    }

    pub fn unavailable(source: anyhow::Error) -> Self {
        ApiError {
            source: Some(source),
            retry_after: Some(1),
            ..ApiError::new(
                ErrorCode::Unavailable,
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
                code,
                message,
                details,
                retry_after: (code == ErrorCode::Unavailable).then_some(1),
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
        status_of(self.code)
    }

    fn error_response(&self) -> HttpResponse {
        match self.code {
            ErrorCode::Internal => tracing::error!(error = %self, "request failed"),
            ErrorCode::Unavailable => tracing::warn!(error = %self, "request failed"),
            _ => tracing::debug!(error = %self, "request rejected"),
        }
        let mut res = HttpResponse::build(self.status_code());
        if self.code == ErrorCode::Unauthorized {
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
        for code in ErrorCode::ALL {
            let status = status_of(code);
            assert!(status.is_client_error() || status.is_server_error());
            if status.is_client_error()
                && status != StatusCode::BAD_REQUEST
                && status != StatusCode::CONFLICT
            {
                assert_eq!(code_for_status(status), code, "{code:?}");
            }
        }
        assert_eq!(status_of(ErrorCode::IdempotencyKeyReused).as_u16(), 422);
        assert_eq!(status_of(ErrorCode::PreconditionFailed).as_u16(), 412);
    }
}
