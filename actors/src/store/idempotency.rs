//! SQL for `idempotency_keys`: an atomic claim, completed in the same
//! transaction as the write it guards, so that a crash between the write and
//! the bookkeeping can never let a retry write twice.

use chrono::Duration;
use deadpool_postgres::GenericClient;
use serde_json::Value;
use uuid::Uuid;

use crate::domain::{Error, ErrorCode, Result};
use crate::store::{self, Db};

/// The scope and fingerprint of one keyed request.
#[derive(Debug, Clone)]
pub struct IdemKey {
    pub tenant: String,
    /// The caller's actor id: one caller's key never answers another caller.
    pub caller: String,
    pub method: String,
    pub path: String,
    pub key: String,
    /// SHA-256 of the raw body.
    pub fingerprint: Vec<u8>,
}

/// A key claimed by one request (it may complete it).
#[derive(Debug, Clone)]
pub struct Claim {
    pub key: IdemKey,
    pub claim_id: Uuid,
}

/// The answer to a keyed request as the edge made it, stored for replay byte
/// for byte (the core neither reads nor renders it).
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What a claim attempt found.
pub enum ClaimOutcome {
    Claimed(Claim),
    /// Completed earlier with the same body: replay this.
    Replay(Recorded),
    /// The first request with this key is still in flight.
    InUse,
    /// The key was used with another body.
    Reused,
}

/// The completion that travels with the write: the claim, and how the edge
/// renders its answer from the value the write produces.
pub struct Idem<T> {
    pub claim: Claim,
    pub render: Box<dyn Fn(&T) -> Recorded + Send + Sync>,
}

impl<T> Idem<T> {
    /// Completes the claim inside the write's transaction; a claim that was
    /// lost (taken over after its lease expired) refuses the write.
    pub async fn complete(&self, client: &impl GenericClient, value: &T) -> Result<()> {
        let recorded = (self.render)(value);
        if complete(client, &self.claim, &recorded).await? {
            Ok(())
        } else {
            Err(in_use())
        }
    }
}

pub fn in_use() -> Error {
    Error::rejected(
        ErrorCode::IdempotencyKeyInUse,
        "a request with this Idempotency-Key is still in flight",
    )
}

/// Claims `key` atomically: a new key, an expired one, or an abandoned
/// in-flight claim with the same body can be taken; anything else is reported.
#[tracing::instrument(level = "debug", skip_all, fields(tenant = %key.tenant, path = %key.path))]
pub async fn claim(db: &Db, key: IdemKey, ttl: Duration, lease: Duration) -> Result<ClaimOutcome> {
    let client = db.write().await?;
    for _ in 0..2 {
        let now = store::now_ms();
        let claim_id = Uuid::now_v7();
        let stmt = client
            .prepare_cached(
                "INSERT INTO idempotency_keys (tenant_id, method, path, key, fingerprint, state, locked_until, \
                   created_at, expires_at, claim_id, caller) \
                 VALUES ($1, $2, $3, $4, $5, 'IN_FLIGHT', $6, $7, $8, $9, $10) \
                 ON CONFLICT (tenant_id, caller, method, path, key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, \
                   state = 'IN_FLIGHT', response_status = NULL, response_headers = NULL, response_body = NULL, \
                   locked_until = EXCLUDED.locked_until, created_at = EXCLUDED.created_at, \
                   expires_at = EXCLUDED.expires_at, claim_id = EXCLUDED.claim_id \
                 WHERE idempotency_keys.expires_at <= $7 \
                    OR (idempotency_keys.state = 'IN_FLIGHT' AND idempotency_keys.locked_until <= $7 \
                        AND idempotency_keys.fingerprint = EXCLUDED.fingerprint) \
                 RETURNING claim_id",
            )
            .await?;
        let row = client
            .query_opt(
                &stmt,
                &[
                    &key.tenant,
                    &key.method,
                    &key.path,
                    &key.key,
                    &key.fingerprint,
                    &(now + lease),
                    &now,
                    &(now + ttl),
                    &claim_id,
                    &key.caller,
                ],
            )
            .await?;
        if row.is_some_and(|r| r.get::<_, Option<Uuid>>(0) == Some(claim_id)) {
            return Ok(ClaimOutcome::Claimed(Claim { key, claim_id }));
        }
        let stmt = client
            .prepare_cached(
                "SELECT fingerprint, state, response_status, response_headers, response_body \
                 FROM idempotency_keys WHERE tenant_id = $1 AND method = $2 AND path = $3 AND key = $4 \
                   AND caller = $5",
            )
            .await?;
        let Some(row) = client
            .query_opt(
                &stmt,
                &[&key.tenant, &key.method, &key.path, &key.key, &key.caller],
            )
            .await?
        else {
            // Purged between the two statements: claim again.
            continue;
        };
        return Ok(outcome_of(&row, &key));
    }
    Err(Error::Unexpected(anyhow::anyhow!(
        "the idempotency key vanished twice while claiming it"
    )))
}

/// What an existing key answers a claim that did not take it.
fn outcome_of(row: &tokio_postgres::Row, key: &IdemKey) -> ClaimOutcome {
    let fingerprint: Vec<u8> = row.get(0);
    if fingerprint != key.fingerprint {
        return ClaimOutcome::Reused;
    }
    let state: String = row.get(1);
    if state != "COMPLETED" {
        return ClaimOutcome::InUse;
    }
    let headers: Value = row.get::<_, Option<Value>>(3).unwrap_or(Value::Null);
    let headers = headers
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| Some((p[0].as_str()?.to_string(), p[1].as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    ClaimOutcome::Replay(Recorded {
        status: row.get::<_, Option<i16>>(2).unwrap_or(200) as u16,
        headers,
        body: row.get::<_, Option<Vec<u8>>>(4).unwrap_or_default(),
    })
}

/// Records the response of a claim (in the caller's transaction). False when
/// the claim no longer holds the key.
pub async fn complete(client: &impl GenericClient, claim: &Claim, rec: &Recorded) -> Result<bool> {
    let stmt = client
        .prepare_cached(
            "UPDATE idempotency_keys SET state = 'COMPLETED', response_status = $6, response_headers = $7, \
               response_body = $8, locked_until = NULL \
             WHERE tenant_id = $1 AND method = $2 AND path = $3 AND key = $4 AND claim_id = $5 \
               AND state = 'IN_FLIGHT' AND caller = $9",
        )
        .await?;
    let headers = Value::Array(
        rec.headers
            .iter()
            .map(|(k, v)| Value::Array(vec![Value::String(k.clone()), Value::String(v.clone())]))
            .collect(),
    );
    let k = &claim.key;
    let n = client
        .execute(
            &stmt,
            &[
                &k.tenant,
                &k.method,
                &k.path,
                &k.key,
                &claim.claim_id,
                &(rec.status as i16),
                &headers,
                &rec.body,
                &k.caller,
            ],
        )
        .await?;
    Ok(n == 1)
}

/// Records a response that guards no write (a refusal), in its own transaction.
pub async fn complete_alone(db: &Db, claim: &Claim, rec: &Recorded) -> Result<bool> {
    let client = db.write().await?;
    complete(&client, claim, rec).await
}

/// Frees a claim (its request failed with a 5xx).
pub async fn release(db: &Db, claim: &Claim) -> Result<()> {
    let client = db.write().await?;
    let stmt = client
        .prepare_cached(
            "DELETE FROM idempotency_keys WHERE tenant_id = $1 AND method = $2 AND path = $3 AND key = $4 \
               AND claim_id = $5 AND state = 'IN_FLIGHT' AND caller = $6",
        )
        .await?;
    let k = &claim.key;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
        &k.tenant,
        &k.method,
        &k.path,
        &k.key,
        &claim.claim_id,
        &k.caller,
    ];
    client.execute(&stmt, &params).await?;
    Ok(())
}

/// Deletes expired keys; returns how many.
pub async fn purge(db: &Db) -> Result<u64> {
    let client = db.write().await?;
    let stmt = client
        .prepare_cached("DELETE FROM idempotency_keys WHERE expires_at <= $1")
        .await?;
    Ok(client.execute(&stmt, &[&store::now_ms()]).await?)
}
