//! Rate limits (GCRA, governor): one keyed limiter per tenant and one per
//! bearer token, charged only after the token verifies, and the tenant's only
//! when the caller may act in it: a request that does not authenticate spends
//! nobody's budget (it gets its 401). Health, readiness, the OpenAPI document,
//! metrics and admin routes are exempt. Keyed state is trimmed periodically so that many
//! distinct keys cannot grow memory without bound.

use std::num::NonZeroU32;
use std::time::Duration;

use crate::http::error::Code;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, ResponseError};
use actors::domain::TenantId;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use secrecy::ExposeSecret;

use crate::http::auth::{authenticate_request, Caller};
use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::settings::RateLimitSettings;

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

/// The tenant a request names (header, else `tenantId` in the query), when
/// it is a well-formed tenant id that `caller` may act in: only such a request
/// is charged to that tenant's budget.
fn charged_tenant(req: &ServiceRequest, caller: &Caller) -> Option<String> {
    let named = match req.headers().get("x-tenant-id") {
        Some(h) => h.to_str().ok().map(str::to_string),
        None => crate::http::extract::query_param(req.query_string(), "tenantId"),
    }?;
    let tenant = TenantId::parse(&named).ok()?;
    caller.check_tenant(&tenant).ok()?;
    Some(named)
}

pub async fn rate_limit(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let limits = req
        .app_data::<web::Data<AppState>>()
        .and_then(|s| s.rate_limits.as_ref().map(|_| s.clone()));
    if let Some(state) = limits.filter(|_| !crate::http::paths::is_unlimited(req.path())) {
        // Authenticate first: a request that does not verify spends no budget
        // (its handler answers 401), so nobody can lock a tenant out.
        let caller = authenticate_request(req.request()).ok();
        if let (Some(limits), Some(caller)) = (&state.rate_limits, caller) {
            let tenant = charged_tenant(&req, &caller);
            if let Err(wait) = limits.check(tenant.as_deref(), Some(caller.token.expose_secret())) {
                let mut err = ApiError::new(Code::RateLimited, "rate limit exceeded; retry later");
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
