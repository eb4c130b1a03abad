//! `Idempotency-Key` at the edge: claim the key before the handler's work,
//! replay a completed response byte for byte, hand the claim to the write that
//! completes it in its own transaction, record refusals, free it on 5xx.

use crate::http::error::Code;
use actix_web::dev::ResourceDef;
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError};
use actors::domain::{ActorId, TenantId};
use actors::service::idempotency::{in_use, Claim, ClaimOutcome, Idem, IdemKey, Recorded};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::http::auth::Caller;
use crate::http::error::{ApiError, ShapedError};
use crate::http::extract::{JsonBody, RequestBody};
use crate::http::state::{AppState, State};
use crate::http::tenant::Ctx;

pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
pub const IDEMPOTENCY_TTL: &str = "idempotency-ttl";
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// The outcome of `begin`.
enum Begun {
    /// Go on; with a claim when the request carried a key.
    Proceed(Option<Claim>),
    /// The response to send instead (a replay).
    Respond(HttpResponse),
}

fn ttl_secs(state: &AppState) -> u64 {
    (state.services.idempotency.ttl().num_milliseconds() as f64 / 1000.0)
        .round()
        .max(0.0) as u64
}

fn with_ttl(mut res: HttpResponse, state: &AppState) -> HttpResponse {
    res.headers_mut().insert(
        HeaderName::from_static(IDEMPOTENCY_TTL),
        HeaderValue::from(ttl_secs(state)),
    );
    res
}

/// The routes that honour `Idempotency-Key` (all POSTs that create).
static KEYED_ROUTES: std::sync::LazyLock<Vec<ResourceDef>> = std::sync::LazyLock::new(|| {
    crate::http::paths::KEYED
        .into_iter()
        .map(|(path, _)| ResourceDef::new(path))
        .collect()
});

/// Whether `method path` is a keyed route: every response to it carries
/// `Idempotency-TTL`, also those made before its handler runs (401, 413,
/// 415, 400 of the body, 429).
pub fn is_keyed_route(method: &Method, path: &str) -> bool {
    *method == Method::POST && KEYED_ROUTES.iter().any(|r| r.is_match(path))
}

/// Adds `Idempotency-TTL` unless the response has it.
pub fn ensure_ttl(headers: &mut HeaderMap, state: &AppState) {
    let name = HeaderName::from_static(IDEMPOTENCY_TTL);
    if !headers.contains_key(&name) {
        headers.insert(name, HeaderValue::from(ttl_secs(state)));
    }
}

/// A JSON response as recorded (and sent) by a keyed route: its status, the
/// headers a replay must repeat (content type, location, ETag) and the body.
pub fn recorded_json<T: Serialize>(
    status: StatusCode,
    headers: Vec<(&str, String)>,
    body: &T,
) -> Recorded {
    let mut h: Vec<(String, String)> = vec![("content-type".into(), "application/json".into())];
    h.extend(headers.into_iter().map(|(k, v)| (k.to_string(), v)));
    Recorded {
        status: status.as_u16(),
        headers: h,
        body: serde_json::to_vec(body).unwrap_or_default(),
    }
}

/// The response of a recording.
pub fn to_response(rec: &Recorded) -> HttpResponse {
    let status = StatusCode::from_u16(rec.status).unwrap_or(StatusCode::OK);
    let mut res = HttpResponse::build(status);
    for (k, v) in &rec.headers {
        res.insert_header((k.as_str(), v.as_str()));
    }
    let mut res = res.body(rec.body.clone());
    if status.is_client_error() || status.is_server_error() {
        res.extensions_mut().insert(ShapedError);
    }
    res
}

fn error_recorded(err: &ApiError) -> Recorded {
    let mut headers = Vec::new();
    if let Some(secs) = err.retry_after {
        headers.push(("retry-after", secs.to_string()));
    }
    recorded_json(err.status_code(), headers, &err.body())
}

/// Validates the `Idempotency-Key` header and claims it (scope: tenant,
/// caller, method, concrete path, key; fingerprint: SHA-256 of the raw body).
/// Refusals (in use, reused, a bad key) come back as the response to send.
/// Call it only once the caller is known to be allowed to make the request.
async fn begin(
    state: &AppState,
    req: &HttpRequest,
    caller: &Caller,
    tenant: &TenantId,
    raw: &[u8],
) -> Begun {
    match try_begin(state, req, caller, tenant, raw).await {
        Ok(begun) => begun,
        Err(err) => Begun::Respond(with_ttl(err.error_response(), state)),
    }
}

async fn try_begin(
    state: &AppState,
    req: &HttpRequest,
    caller: &Caller,
    tenant: &TenantId,
    raw: &[u8],
) -> Result<Begun, ApiError> {
    let Some(value) = req.headers().get(IDEMPOTENCY_KEY) else {
        return Ok(Begun::Proceed(None));
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| {
            (1..=255).contains(&k.len())
                && k.bytes().all(|b| (0x21..=0x7e).contains(&b) || b == b' ')
        })
        .ok_or_else(|| {
            ApiError::field(
                "Idempotency-Key",
                "must be 1..255 printable ASCII characters",
            )
        })?;
    let key = IdemKey {
        tenant: tenant.to_string(),
        caller: caller.actor_id.to_string(),
        method: req.method().to_string(),
        path: req.path().to_string(),
        key: key.to_string(),
        fingerprint: Sha256::digest(raw).to_vec(),
    };
    let outcome = state.services.idempotency.claim(key).await?;
    Ok(match outcome {
        ClaimOutcome::Claimed(c) => Begun::Proceed(Some(c)),
        ClaimOutcome::Replay(rec) => {
            let mut res = with_ttl(to_response(&rec), state);
            res.headers_mut().insert(
                HeaderName::from_static(IDEMPOTENT_REPLAYED),
                HeaderValue::from_static("true"),
            );
            Begun::Respond(res)
        }
        ClaimOutcome::InUse => {
            return Err(ApiError::from(in_use()));
        }
        ClaimOutcome::Reused => {
            return Err(ApiError::new(
                Code::IdempotencyKeyReused,
                "this Idempotency-Key was used with another request body",
            ))
        }
    })
}

/// What a keyed POST handler takes: the caller's context, its JSON body, and
/// what claiming the key needs. `run` is the one shape of a keyed handler.
pub struct KeyedPost<T> {
    pub ctx: Ctx,
    pub body: JsonBody<T>,
    state: State,
    req: HttpRequest,
}

impl<T: RequestBody + 'static> FromRequest for KeyedPost<T> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let ctx = Ctx::from_request(req, payload);
        let body = JsonBody::<T>::from_request(req, payload);
        let req = req.clone();
        Box::pin(async move {
            let ctx = ctx.await?;
            let body = body.await?;
            let state = req
                .app_data::<State>()
                .cloned()
                .ok_or_else(|| ApiError::internal(anyhow::anyhow!("application state missing")))?;
            Ok(KeyedPost {
                ctx,
                body,
                state,
                req,
            })
        })
    }
}

impl<T> KeyedPost<T> {
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Claims the key (or answers with its replay or refusal), validates
    /// the body, runs `work` with the completion its write carries, answers
    /// with `render` of what it wrote, and finishes the key.
    pub async fn run<V, Fut>(
        self,
        tenant: TenantId,
        render: fn(&V) -> Recorded,
        work: impl FnOnce(Work<T, V>) -> Fut,
    ) -> Result<HttpResponse, ApiError>
    where
        T: validator::Validate,
        V: 'static,
        Fut: Future<Output = Result<V, ApiError>>,
    {
        let KeyedPost {
            ctx,
            body,
            state,
            req,
        } = self;
        let claim = match begin(&state, &req, &ctx.caller, &tenant, &body.raw).await {
            Begun::Respond(res) => return Ok(res),
            Begun::Proceed(claim) => claim,
        };
        let result = match body.validate().map_err(crate::http::validation::to_api) {
            Ok(()) => {
                let idem = completion(&claim, render);
                let w = Work {
                    actor: ctx.caller.actor_id.clone(),
                    tenant,
                    body: body.value,
                    idem,
                };
                work(w).await.map(|value| to_response(&render(&value)))
            }
            Err(e) => Err(e),
        };
        finish(&state, claim, result).await
    }
}

/// What a keyed handler's write gets: who acts, in which tenant, the
/// validated body, and the completion its transaction commits.
pub struct Work<T, V> {
    pub actor: ActorId,
    pub tenant: TenantId,
    pub body: T,
    pub idem: Option<Idem<V>>,
}

/// The completion a write carries for `claim`.
fn completion<T: 'static>(claim: &Option<Claim>, render: fn(&T) -> Recorded) -> Option<Idem<T>> {
    claim.clone().map(|claim| Idem {
        claim,
        render: Box::new(render),
    })
}

/// Finishes a keyed request: records a refusal under the key (its write did
/// not happen), frees the key after a 5xx, and adds `Idempotency-TTL`.
async fn finish(
    state: &AppState,
    claim: Option<Claim>,
    result: Result<HttpResponse, ApiError>,
) -> Result<HttpResponse, ApiError> {
    let res = match (result, claim) {
        (Ok(res), _) => res,
        (Err(err), None) => err.error_response(),
        // The claim was lost (taken over); nothing of ours to record.
        (Err(err), Some(_)) if err.code == Code::IdempotencyKeyInUse => err.error_response(),
        (Err(err), Some(claim)) if err.status_code().is_server_error() => {
            if let Err(e) = state.services.idempotency.release(&claim).await {
                tracing::warn!(error = %e, "freeing an idempotency key failed; it expires with its lease");
            }
            err.error_response()
        }
        (Err(err), Some(claim)) => {
            // Logged like any refusal, then recorded for replay.
            let _ = err.error_response();
            let rec = error_recorded(&err);
            if let Err(e) = state.services.idempotency.record(&claim, &rec).await {
                tracing::warn!(error = %e, "recording a refusal under its idempotency key failed");
            }
            to_response(&rec)
        }
    };
    Ok(with_ttl(res, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recordings_round_trip_to_the_same_bytes() {
        let rec = recorded_json(
            StatusCode::CREATED,
            vec![("location", "/x".into())],
            &serde_json::json!({"a": 1}),
        );
        let res = to_response(&rec);
        assert_eq!(res.status(), 201);
        assert_eq!(res.headers().get("location").unwrap(), "/x");
        assert_eq!(
            res.headers().get("content-type").unwrap(),
            "application/json"
        );
    }
}
