//! The door to idempotency keys: claim before the work, record a refusal,
//! free after a failure, purge what expired. (A write completes its key in
//! its own transaction: see `store::idempotency::Idem`.)

use chrono::Duration;

use crate::domain::Result;
pub use crate::store::idempotency::{in_use, Claim, ClaimOutcome, Idem, IdemKey, Recorded};
use crate::store::{idempotency as sql, Db};

#[derive(Clone)]
pub struct Idempotency {
    pub(crate) db: Db,
    pub(crate) ttl: Duration,
    pub(crate) lease: Duration,
}

impl Idempotency {
    /// Claims `key` atomically (see `store::idempotency::claim`).
    pub async fn claim(&self, key: IdemKey) -> Result<ClaimOutcome> {
        sql::claim(&self.db, key, self.ttl, self.lease).await
    }

    /// Records the answer of a request whose write did not happen.
    pub async fn record(&self, claim: &Claim, rec: &Recorded) -> Result<bool> {
        sql::complete_alone(&self.db, claim, rec).await
    }

    /// Frees a claim (its request failed with a 5xx).
    pub async fn release(&self, claim: &Claim) -> Result<()> {
        sql::release(&self.db, claim).await
    }

    /// Deletes expired keys; returns how many.
    pub async fn purge(&self) -> Result<u64> {
        sql::purge(&self.db).await
    }

    /// How long a completed key answers with its recording.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}
