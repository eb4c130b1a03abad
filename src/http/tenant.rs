//! Tenant resolution: the `x-tenant-id` header, or `tenantId` in the body or
//! query of the routes whose shape carries it.

use std::future::{ready, Ready};

use crate::http::error::Code;
use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest};
use actors::domain::TenantId;

use crate::http::auth::Caller;
use crate::http::error::ApiError;

pub const TENANT_HEADER: &str = "x-tenant-id";

/// The raw `x-tenant-id` header of a request, not yet reconciled.
#[derive(Debug, Clone)]
pub struct TenantHeader(Option<String>);

impl TenantHeader {
    /// The request's tenant, from the header or `other` (a body or query
    /// `tenantId`), checked against what the caller may access.
    pub fn resolve(&self, caller: &Caller, other: Option<&str>) -> Result<TenantId, ApiError> {
        let raw = match (self.0.as_deref(), other) {
            (Some(h), Some(o)) if h != o => {
                return Err(ApiError::new(
                    Code::TenantMismatch,
                    "the x-tenant-id header and tenantId differ",
                ))
            }
            (Some(h), _) => (h, "x-tenant-id"),
            (None, Some(o)) => (o, "tenantId"),
            (None, None) => {
                return Err(ApiError::new(
                    Code::TenantRequired,
                    "a tenant is required: send the x-tenant-id header",
                ))
            }
        };
        let tenant = TenantId::parse(raw.0).map_err(|msg| ApiError::field(raw.1, msg))?;
        caller.check_tenant(&tenant)?;
        Ok(tenant)
    }
}

impl TenantHeader {
    /// The header of a request; several differing values are a mismatch.
    pub fn read(req: &HttpRequest) -> Result<Self, ApiError> {
        let mut values = req.headers().get_all(TENANT_HEADER);
        let first = values.next();
        if values.any(|v| Some(v) != first) {
            return Err(ApiError::new(
                Code::TenantMismatch,
                "the request carries different x-tenant-id headers",
            ));
        }
        match first {
            None => Ok(TenantHeader(None)),
            Some(v) => v
                .to_str()
                .map(|s| TenantHeader(Some(s.to_string())))
                .map_err(|_| ApiError::field("x-tenant-id", "must be ASCII")),
        }
    }
}

impl FromRequest for TenantHeader {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(TenantHeader::read(req))
    }
}

/// Caller and tenant header together: what nearly every handler needs.
pub struct Ctx {
    pub caller: Caller,
    pub tenant_header: TenantHeader,
}

impl Ctx {
    /// The id in path segment `name` (a UUID) and the request's tenant (from
    /// the header), checked in that order.
    pub fn target(&self, name: &str, raw: &str) -> Result<(uuid::Uuid, TenantId), ApiError> {
        let id = crate::http::extract::path_uuid(name, raw)?;
        Ok((id, self.tenant(None)?))
    }

    pub fn tenant(&self, other: Option<&str>) -> Result<TenantId, ApiError> {
        self.tenant_header.resolve(&self.caller, other)
    }
}

impl FromRequest for Ctx {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        // Authentication first: an unauthenticated request learns nothing else.
        let caller = match Caller::from_request(req, payload).into_inner() {
            Ok(c) => c,
            Err(e) => return ready(Err(e)),
        };
        ready(
            TenantHeader::from_request(req, payload)
                .into_inner()
                .map(|tenant_header| Ctx {
                    caller,
                    tenant_header,
                }),
        )
    }
}
