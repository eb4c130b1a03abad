//! Authentication: the `Caller` extractor. Every route except health, readiness
//! and the OpenAPI document takes a `Caller`, so no route can forget the check.

use std::future::{ready, Ready};

use crate::http::error::Code;
use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use actors::domain::{ActorId, TenantId};
use secrecy::{ExposeSecret, SecretString};

use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::settings::{AuthMode, AuthSettings};

/// The tenants a caller may act in.
#[derive(Debug, Clone)]
pub enum TenantScope {
    Any,
    Only(Vec<String>),
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub actor_id: ActorId,
    pub admin: bool,
    /// May complete commands (the `worker` role; every caller in `dev` mode).
    pub worker: bool,
    pub tenants: TenantScope,
    /// The bearer token itself (for per-token rate limits); never logged.
    pub token: SecretString,
}

impl Caller {
    /// 403 unless the caller may act in `tenant`.
    pub fn check_tenant(&self, tenant: &TenantId) -> Result<(), ApiError> {
        match &self.tenants {
            TenantScope::Any => Ok(()),
            TenantScope::Only(list) if list.iter().any(|t| t == tenant.as_str()) => Ok(()),
            TenantScope::Only(_) => Err(ApiError::new(
                Code::Forbidden,
                format!("the token does not grant tenant {tenant}"),
            )),
        }
    }

    pub fn require_worker(&self) -> Result<(), ApiError> {
        if self.worker || self.admin {
            Ok(())
        } else {
            Err(ApiError::new(
                Code::Forbidden,
                "the worker or admin role is required",
            ))
        }
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiError::new(Code::Forbidden, "admin role required"))
        }
    }
}

/// The claims scriptd reads from a JWT.
#[derive(Debug, serde::Deserialize)]
struct Claims {
    sub: String,
    /// A tenant id or a list of them.
    #[serde(default)]
    tenant: Option<OneOrMany>,
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// Verifies bearer tokens according to `[auth]`.
pub struct Authenticator {
    mode: AuthMode,
    admin_token: SecretString,
    jwt: Option<(jsonwebtoken::DecodingKey, jsonwebtoken::Validation)>,
}

impl Authenticator {
    pub fn new(settings: &AuthSettings) -> anyhow::Result<Self> {
        use jsonwebtoken::{Algorithm, DecodingKey, Validation};
        let jwt = match settings.mode {
            AuthMode::Dev => None,
            AuthMode::Jwt => {
                let file = &settings.jwt_public_key_file;
                let secret = settings.jwt_secret.expose_secret();
                let (key, alg) = if !file.as_os_str().is_empty() {
                    let pem = std::fs::read(file).map_err(|e| {
                        anyhow::anyhow!("reading auth.jwt_public_key_file {}: {e}", file.display())
                    })?;
                    (DecodingKey::from_rsa_pem(&pem)?, Algorithm::RS256)
                } else if !secret.is_empty() {
                    (
                        DecodingKey::from_secret(secret.as_bytes())?,
                        Algorithm::HS256,
                    )
                } else {
                    anyhow::bail!("auth.mode is \"jwt\": set auth.jwt_secret (HS256) or auth.jwt_public_key_file (RS256)");
                };
                let mut validation = Validation::new(alg);
                validation.validate_exp = true;
                validation.validate_nbf = true;
                validation.leeway = 5;
                validation.set_required_spec_claims(&["exp", "sub"]);
                Some((key, validation))
            }
        };
        Ok(Authenticator {
            mode: settings.mode,
            admin_token: settings.admin_token.clone(),
            jwt,
        })
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    pub fn authenticate(&self, token: &str) -> Result<Caller, ApiError> {
        match &self.jwt {
            None => Ok(self.dev_caller(token)),
            Some((key, validation)) => {
                let data = jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|e| {
                    ApiError::unauthorized(format!("the token does not verify: {e}"))
                })?;
                let c = data.claims;
                if c.sub.trim().is_empty() {
                    return Err(ApiError::unauthorized(
                        "the token's sub claim is empty: it must name the caller",
                    ));
                }
                let tenants = match c.tenant {
                    None => TenantScope::Only(Vec::new()),
                    Some(OneOrMany::One(t)) => TenantScope::Only(vec![t]),
                    Some(OneOrMany::Many(ts)) => TenantScope::Only(ts),
                };
                Ok(Caller {
                    actor_id: ActorId::new(c.sub),
                    admin: c.roles.iter().any(|r| r == "admin"),
                    worker: c.roles.iter().any(|r| r == "worker"),
                    tenants,
                    token: SecretString::from(token.to_string()),
                })
            }
        }
    }

    fn dev_caller(&self, token: &str) -> Caller {
        let admin_token = self.admin_token.expose_secret();
        let admin = !admin_token.is_empty() && token == admin_token;
        let prefix = token.split('.').next().unwrap_or_default();
        let actor = if prefix.is_empty() {
            "anonymous"
        } else {
            prefix
        };
        Caller {
            actor_id: ActorId::new(actor),
            admin,
            worker: true,
            tenants: TenantScope::Any,
            token: SecretString::from(token.to_string()),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer_token(req: &HttpRequest) -> Result<&str, ApiError> {
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization header"))?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| ApiError::unauthorized("expected Authorization: Bearer <token>"))?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(ApiError::unauthorized(
            "expected Authorization: Bearer <token>",
        ));
    }
    Ok(token)
}

/// The routes that also take the token as `?access_token=` when there is no
/// Authorization header: the SSE stream (browsers' EventSource cannot send
/// headers) and the runner stream (nor can browsers' WebSocket).
pub fn takes_query_token(path: &str) -> bool {
    path == "/events/stream"
        || path
            .strip_prefix("/runs/")
            .and_then(|rest| rest.strip_suffix("/stream"))
            .is_some_and(|id| !id.is_empty() && !id.contains('/'))
}

/// The `access_token` query parameter, percent-decoded.
fn query_token(req: &HttpRequest) -> Option<String> {
    crate::http::extract::query_param(req.query_string(), "access_token").filter(|t| !t.is_empty())
}

/// A caller verified earlier in the same request (by the rate limiter, which
/// must know who calls before it charges a budget).
#[derive(Clone)]
struct Verified(Caller);

/// Verifies the caller of a request once: the bearer token, or on the SSE
/// route a query token when there is no Authorization header.
pub fn authenticate_request(req: &HttpRequest) -> Result<Caller, ApiError> {
    if let Some(Verified(caller)) = req.extensions().get::<Verified>() {
        return Ok(caller.clone());
    }
    let state = AppState::of(req)?;
    let from_query = (takes_query_token(req.path())
        && !req.headers().contains_key(header::AUTHORIZATION))
    .then(|| query_token(req))
    .flatten();
    let caller = match from_query {
        Some(token) => state.auth.authenticate(&token)?,
        None => state.auth.authenticate(bearer_token(req)?)?,
    };
    req.extensions_mut().insert(Verified(caller.clone()));
    Ok(caller)
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate_request(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> Authenticator {
        Authenticator {
            mode: AuthMode::Dev,
            admin_token: SecretString::from("dev-admin".to_string()),
            jwt: None,
        }
    }

    #[test]
    fn dev_actor_is_the_token_prefix() {
        assert_eq!(
            dev().authenticate("alice.xyz").unwrap().actor_id.as_str(),
            "alice"
        );
        assert_eq!(dev().authenticate("bob").unwrap().actor_id.as_str(), "bob");
        assert_eq!(
            dev().authenticate(".x").unwrap().actor_id.as_str(),
            "anonymous"
        );
        assert!(dev().authenticate("dev-admin").unwrap().admin);
        assert!(!dev().authenticate("alice").unwrap().admin);
    }
}
