//! Rate limits (GCRA, governor): one keyed limiter per tenant and one per
//! bearer token. Health, readiness, the OpenAPI document, metrics and admin
//! routes are exempt. Keyed state is trimmed periodically so that many
//! distinct keys cannot grow memory without bound.

use std::num::NonZeroU32;
use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, ResponseError};
use actors::ErrorCode;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::ApiError;
use crate::settings::RateLimitSettings;
use crate::state::AppState;

pub struct RateLimits {
    per_tenant: DefaultKeyedRateLimiter<String>,
    per_token: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
}

fn quota(per_sec: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(per_sec.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rate).allow_burst(burst)
}

impl RateLimits {
    pub fn new(s: &RateLimitSettings) -> Option<Self> {
        s.enabled.then(|| RateLimits {
            per_tenant: RateLimiter::keyed(quota(s.per_tenant_per_sec, s.burst)),
            per_token: RateLimiter::keyed(quota(s.per_token_per_sec, s.burst)),
            clock: DefaultClock::default(),
        })
    }

    /// `Err(wait)` when either key is over its limit.
    pub fn check(&self, tenant: Option<&str>, token: Option<&str>) -> Result<(), Duration> {
        let now = self.clock.now();
        if let Some(t) = tenant {
            self.per_tenant
                .check_key(&t.to_string())
                .map_err(|n| n.wait_time_from(now))?;
        }
        if let Some(t) = token {
            self.per_token
                .check_key(&t.to_string())
                .map_err(|n| n.wait_time_from(now))?;
        }
        Ok(())
    }

    /// Forgets keys whose state is back to idle.
    pub fn housekeeping(&self) {
        self.per_tenant.retain_recent();
        self.per_tenant.shrink_to_fit();
        self.per_token.retain_recent();
        self.per_token.shrink_to_fit();
    }

    pub fn keys(&self) -> usize {
        self.per_tenant.len() + self.per_token.len()
    }
}

fn exempt(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/openapi.json" | "/metrics")
        || path.starts_with("/admin/")
}

/// The tenant a request names, unverified (header, else `tenantId` in the query).
fn claimed_tenant(req: &ServiceRequest) -> Option<String> {
    if let Some(h) = req
        .headers()
        .get("x-tenant-id")
        .and_then(|v| v.to_str().ok())
    {
        return Some(h.to_string());
    }
    req.query_string()
        .split('&')
        .find_map(|pair| pair.strip_prefix("tenantId=").map(str::to_string))
}

fn claimed_token(req: &ServiceRequest) -> Option<String> {
    let from_header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.split_once(' '))
        .map(|(_, t)| t.trim().to_string())
        .filter(|t| !t.is_empty());
    from_header.or_else(|| {
        req.query_string()
            .split('&')
            .find_map(|p| p.strip_prefix("access_token=").map(str::to_string))
    })
}

pub async fn rate_limit(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let limits = req
        .app_data::<web::Data<AppState>>()
        .and_then(|s| s.rate_limits.as_ref().map(|_| s.clone()));
    if let Some(state) = limits.filter(|_| !exempt(req.path())) {
        if let Some(limits) = &state.rate_limits {
            if let Err(wait) = limits.check(
                claimed_tenant(&req).as_deref(),
                claimed_token(&req).as_deref(),
            ) {
                let mut err =
                    ApiError::new(ErrorCode::RateLimited, "rate limit exceeded; retry later");
                err.retry_after = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
                return Ok(req.into_response(err.error_response()));
            }
        }
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_boxed_body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_per_key_and_say_when_to_retry() {
        let limits = RateLimits::new(&RateLimitSettings {
            enabled: true,
            per_tenant_per_sec: 1,
            per_token_per_sec: 100,
            burst: 2,
        })
        .unwrap();
        assert!(limits.check(Some("a"), None).is_ok());
        assert!(limits.check(Some("a"), None).is_ok());
        let wait = limits.check(Some("a"), None).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        assert!(limits.check(Some("b"), None).is_ok());
        assert_eq!(limits.keys(), 2);
    }
}
