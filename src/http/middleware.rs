//! The outermost middleware: correlation id, the request's tracing span and
//! access log line, panics caught at the edge, and the contract's error shape
//! for every 4xx/5xx, also those actix-web produces itself (unknown route,
//! wrong method).

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpResponse, ResponseError};
use futures::FutureExt;
use tracing::Instrument;

use crate::http::error::{code_for_status, ApiError, ErrorBody, ShapedError};
use crate::http::state::AppState;

pub const CORRELATION_HEADER: HeaderName = HeaderName::from_static("correlation-id");

/// The request's correlation id (from the `Correlation-Id` header or generated).
#[derive(Debug, Clone)]
pub struct CorrelationId(pub String);

fn valid_correlation_id(s: &str) -> bool {
    actors::domain::CorrelationId::parse(s).is_ok()
}

/// The path and query of a request with `access_token` values redacted. The
/// name is compared as the server decodes it (`access%5Ftoken` is
/// `access_token` too), so no spelling of it reaches the log.
pub fn redacted_target(path: &str, query: &str) -> String {
    if query.is_empty() {
        return path.to_string();
    }
    let query: Vec<String> = query
        .split('&')
        .map(|pair| {
            let (name, _) = pair.split_once('=').unwrap_or((pair, ""));
            let decoded = form_urlencoded::parse(name.as_bytes())
                .next()
                .map(|(k, _)| k.into_owned())
                .unwrap_or_default();
            if decoded == "access_token" {
                format!("{name}=REDACTED")
            } else {
                pair.to_string()
            }
        })
        .collect();
    format!("{path}?{}", query.join("&"))
}

/// The request's correlation id (generated when absent or invalid), and
/// whether the one sent was invalid.
fn correlation_of(req: &ServiceRequest) -> (String, bool) {
    let header = req
        .headers()
        .get(&CORRELATION_HEADER)
        .map(|v| v.to_str().map(str::to_string));
    match header {
        Some(Ok(id)) if valid_correlation_id(&id) => (id, false),
        Some(_) => (uuid::Uuid::now_v7().to_string(), true),
        None => (uuid::Uuid::now_v7().to_string(), false),
    }
}

pub async fn request_context(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    let target = redacted_target(req.path(), req.query_string());
    let (correlation_id, invalid) = correlation_of(&req);
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        target = %target,
        correlation_id = %correlation_id,
    );
    let state = req.app_data::<actix_web::web::Data<AppState>>().cloned();
    let method = req.method().clone();
    let log = |status: u16, route: Option<&str>| {
        let secs = started.elapsed().as_secs_f64();
        if let Some(state) = &state {
            state
                .metrics
                .observe(route.unwrap_or("unmatched"), &method, status, secs);
        }
        let latency_ms = round_ms(secs);
        span.in_scope(|| tracing::info!(status, latency_ms, "request finished"))
    };

    if invalid {
        let err = ApiError::field(
            "Correlation-Id",
            "must be 1..128 characters of [A-Za-z0-9._:-]",
        )
        .with_correlation_id(&correlation_id);
        log(400, None);
        return Ok(req.into_response(err.error_response()));
    }
    req.extensions_mut()
        .insert(CorrelationId(correlation_id.clone()));
    // HEAD is answered like GET; actix-http sends no body for a HEAD request.
    if req.method() == actix_web::http::Method::HEAD {
        req.head_mut().method = actix_web::http::Method::GET;
    }
    let outcome = AssertUnwindSafe(next.call(req))
        .catch_unwind()
        .instrument(span.clone())
        .await;
    match outcome {
        Ok(Ok(res)) => {
            let res = finish_response(
                res.map_into_boxed_body(),
                &correlation_id,
                state.as_ref().map(|s| s.get_ref()),
                &method,
            );
            log(
                res.status().as_u16(),
                res.request().match_pattern().as_deref(),
            );
            Ok(res)
        }
        // Errors of inner middleware (e.g. CORS) that did not become a response.
        Ok(Err(err)) => {
            let status = err.as_response_error().status_code();
            let err = ApiError::new(code_for_status(status), err.to_string())
                .with_correlation_id(&correlation_id);
            log(status.as_u16(), None);
            Err(err.into())
        }
        Err(panic) => {
            let what = panic_message(panic.as_ref());
            let err = span.in_scope(|| {
                ApiError::internal(anyhow::anyhow!("handler panicked: {what}"))
                    .with_correlation_id(&correlation_id)
            });
            log(500, None);
            Err(err.into())
        }
    }
}

/// Seconds as milliseconds rounded to 0.01 ms.
fn round_ms(secs: f64) -> f64 {
    (secs * 100_000.0).round() / 100.0
}

/// What a handler's panic said.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// A handler's response as it leaves: the contract's error shape, the
/// correlation id, and `Idempotency-TTL` on every answer of a keyed route.
fn finish_response(
    mut res: ServiceResponse<BoxBody>,
    correlation_id: &str,
    state: Option<&AppState>,
    method: &actix_web::http::Method,
) -> ServiceResponse<BoxBody> {
    let status = res.status();
    if (status.is_client_error() || status.is_server_error())
        && res.response().extensions().get::<ShapedError>().is_none()
    {
        res = shape_error(res);
    }
    if let Ok(v) = HeaderValue::from_str(correlation_id) {
        res.headers_mut().insert(CORRELATION_HEADER, v);
    }
    if let Some(state) = state {
        if crate::http::idempotency::is_keyed_route(method, res.request().path()) {
            crate::http::idempotency::ensure_ttl(res.headers_mut(), state);
        }
    }
    res
}

/// Replaces the body of an error response that scriptd's handlers did not
/// produce (unknown route, wrong method, framework errors) with the contract's
/// error shape, keeping its status and headers.
fn shape_error(res: ServiceResponse<BoxBody>) -> ServiceResponse<BoxBody> {
    let status = res.status();
    let code = code_for_status(status);
    let (req, old) = res.into_parts();
    let message = match status.as_u16() {
        404 => format!("no route for {} {}", req.method(), req.path()),
        405 => format!("method {} is not allowed on {}", req.method(), req.path()),
        _ => status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_string(),
    };
    let mut new = HttpResponse::build(status);
    for (name, value) in old.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            new.append_header((name.clone(), value.clone()));
        }
    }
    let mut new = new.json(ErrorBody {
        code: code.as_str().to_string(),
        message,
        details: None,
    });
    new.extensions_mut().insert(ShapedError);
    ServiceResponse::new(req, new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{middleware::from_fn, test as atest, web, App, HttpResponse};

    async fn boom() -> HttpResponse {
        panic!("secret internals")
    }

    #[actix_web::test]
    async fn panics_become_a_500_without_internals() {
        let app = atest::init_service(
            App::new()
                .route("/boom", web::get().to(boom))
                .wrap(from_fn(request_context)),
        )
        .await;
        let req = atest::TestRequest::get().uri("/boom").to_request();
        // The error leaves the middleware as an error; actix-web renders it
        // with its `error_response`, as below.
        let Err(err) = atest::try_call_service(&app, req).await else {
            panic!("expected an error");
        };
        let res = err.error_response();
        assert_eq!(res.status(), 500);
        assert!(res.headers().contains_key("correlation-id"));
        let bytes = actix_web::body::to_bytes(res.into_body()).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["code"], "INTERNAL");
        assert!(!body.to_string().contains("secret"));
    }

    #[test]
    fn access_tokens_are_redacted() {
        assert_eq!(
            redacted_target("/events/stream", "tenantId=a&access_token=secret&x=1"),
            "/events/stream?tenantId=a&access_token=REDACTED&x=1"
        );
        assert_eq!(redacted_target("/x", ""), "/x");
        assert_eq!(
            redacted_target("/e", "access%5Ftoken=s1&%61ccess_token=s2&access+token=x&access_token"),
            "/e?access%5Ftoken=REDACTED&%61ccess_token=REDACTED&access+token=x&access_token=REDACTED"
        );
    }

    #[test]
    fn correlation_ids() {
        assert!(valid_correlation_id("abc-1.2:3_4"));
        assert!(!valid_correlation_id(""));
        assert!(!valid_correlation_id("a b"));
        assert!(!valid_correlation_id(&"a".repeat(129)));
    }
}
