//! The SQL store: one module per table, functions over `&impl GenericClient`
//! so they run inside or outside a transaction.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::error::{Error, Result};

pub mod commands;
pub mod events;
pub mod runs;
pub mod scripts;

mod embedded_migrations {
    refinery::embed_migrations!("../migrations");
}

/// Now, truncated to milliseconds: what is stored is what is read back.
pub fn now_ms() -> DateTime<Utc> {
    truncate_ms(Utc::now())
}

pub fn truncate_ms(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(TimeDelta::milliseconds(1)).unwrap_or(t)
}

/// The keyset position before the first row of a newest-first list: later
/// than any row. (A bound, not `$x IS NULL OR …`, so that the same plan serves
/// every page and the index bounds the scan however deep the page.)
pub fn keyset_start() -> (DateTime<Utc>, uuid::Uuid) {
    let far = DateTime::parse_from_rfc3339("9999-12-31T23:59:59Z")
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|_| Utc::now() + TimeDelta::days(36_500));
    (far, uuid::Uuid::max())
}

/// Builds a connection pool. Connecting and waiting for a free connection are
/// both bounded by `connect_timeout`, so that an unreachable database answers
/// quickly instead of hanging.
pub fn connect(url: &str, pool_size: usize, connect_timeout: Duration) -> anyhow::Result<Pool> {
    let mut pg = tokio_postgres::Config::from_str(url).context("invalid database url")?;
    pg.connect_timeout(connect_timeout);
    if pg.get_application_name().is_none() {
        pg.application_name("scriptd");
    }
    let manager = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(connect_timeout))
        .create_timeout(Some(connect_timeout))
        .recycle_timeout(Some(connect_timeout))
        .build()
        .context("building the connection pool")
}

/// Applies the pending refinery migrations.
pub async fn migrate(pool: &Pool) -> Result<()> {
    let mut client = pool.get().await?;
    let report = embedded_migrations::migrations::runner()
        .run_async(&mut **client)
        .await
        .map_err(|e| Error::Unexpected(anyhow::Error::new(e).context("running migrations")))?;
    for m in report.applied_migrations() {
        tracing::info!(migration = %m, "applied migration");
    }
    Ok(())
}

/// `SELECT 1`: is the database answering?
pub async fn ping(pool: &Pool) -> Result<()> {
    let client = pool.get().await?;
    client.simple_query("SELECT 1").await?;
    Ok(())
}
