//! The SQL store: one module per table (and idempotency keys, notifications,
//! the embedded cluster's own statements), functions over `&impl
//! GenericClient` so they run inside or outside a transaction. All SQL of
//! scriptd is here, and so is all knowledge of SQLSTATEs and constraint
//! names: callers get domain errors.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::domain::{Error, Result};

pub mod cluster;
pub mod commands;
pub mod events;
pub mod idempotency;
pub mod notify;
pub mod runs;
pub mod scripts;

mod embedded_migrations {
    refinery::embed_migrations!("../migrations");
}

/// The session advisory lock held while migrating (any constant unlike the
/// events append's).
const MIGRATION_LOCK: i64 = 8_315_187_138_866_869_001;

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

/// The database as the services see it: a pool for writes (shared by the
/// whole process) and a pool for reads. Each HTTP worker thread gets its own
/// read pool (`for_worker`), whose connections that thread drives, so a read
/// does not hop threads.
#[derive(Clone)]
pub struct Db {
    write: Pool,
    read: Pool,
    url: std::sync::Arc<String>,
    read_size: usize,
    timeout: Duration,
}

impl Db {
    /// `pool_size` connections for writes; each worker's read pool holds
    /// `read_size`.
    pub fn connect(
        url: &str,
        pool_size: usize,
        read_size: usize,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let write = connect(url, pool_size, timeout)?;
        Ok(Db {
            read: write.clone(),
            write,
            url: std::sync::Arc::new(url.to_string()),
            read_size: read_size.max(1),
            timeout,
        })
    }

    /// A copy with a read pool of its own, for one worker thread (its
    /// connections open lazily, on that thread).
    pub fn for_worker(&self) -> Self {
        let read =
            connect(&self.url, self.read_size, self.timeout).unwrap_or_else(|_| self.write.clone());
        Db {
            read,
            ..self.clone()
        }
    }

    pub async fn write(&self) -> Result<Object> {
        Ok(self.write.get().await?)
    }

    pub async fn read(&self) -> Result<Object> {
        Ok(self.read.get().await?)
    }

    /// (size, available, max) of the write pool.
    pub fn pool_status(&self) -> (usize, usize, usize) {
        let s = self.write.status();
        (s.size, s.available, s.max_size)
    }

    /// `SELECT 1`: is the database answering?
    pub async fn ping(&self) -> Result<()> {
        self.write().await?.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// Applies the pending refinery migrations.
    pub async fn migrate(&self) -> Result<()> {
        let mut client = self.write().await?;
        // Processes starting together on one database migrate one at a time.
        client
            .batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
            .await?;
        let report = embedded_migrations::migrations::runner()
            .run_async(&mut **client)
            .await;
        client
            .batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
            .await?;
        let report = report
            .map_err(|e| Error::Unexpected(anyhow::Error::new(e).context("running migrations")))?;
        for m in report.applied_migrations() {
            tracing::info!(migration = %m, "applied migration");
        }
        if report.applied_migrations().is_empty() {
            tracing::info!("database schema up to date");
        }
        Ok(())
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }
}

/// Builds a connection pool. Connecting and waiting for a free connection are
/// both bounded by `connect_timeout`, so that an unreachable database answers
/// quickly instead of hanging.
fn connect(url: &str, pool_size: usize, connect_timeout: Duration) -> anyhow::Result<Pool> {
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

impl From<tokio_postgres::Error> for Error {
    fn from(err: tokio_postgres::Error) -> Self {
        // A closed connection, an I/O failure or a connection-class SQLSTATE means
        // the database is (for now) unreachable: 503. Anything else is a bug or a
        // constraint we did not expect: 500.
        let io = std::error::Error::source(&err).is_some_and(|s| s.is::<std::io::Error>());
        let connection_class = err
            .code()
            .is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57P"));
        if err.is_closed() || io || connection_class {
            Error::Unavailable(err.into())
        } else {
            Error::Unexpected(err.into())
        }
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        use deadpool_postgres::{PoolError, TimeoutType};
        // deadpool's own wording ("Timeout occurred while creating a new
        // object") means nothing to whoever reads the log.
        let why = match err {
            PoolError::Backend(e) => return e.into(),
            PoolError::Timeout(TimeoutType::Wait) => {
                "no database connection became free within database.connect_timeout_ms (every pooled connection is busy)"
            }
            PoolError::Timeout(TimeoutType::Create) => {
                "connecting to PostgreSQL took longer than database.connect_timeout_ms"
            }
            PoolError::Timeout(TimeoutType::Recycle) => {
                "checking a pooled database connection took longer than database.connect_timeout_ms"
            }
            PoolError::Closed => "the database connection pool is closed (shutting down)",
            _ => "the database connection pool failed",
        };
        Error::Unavailable(anyhow::anyhow!(why))
    }
}

/// The rows of a cached statement, mapped by `from` (`.pop()` is the row
/// of a lookup by key).
pub(crate) async fn all<T>(
    client: &impl deadpool_postgres::GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    from: impl Fn(&tokio_postgres::Row) -> T,
) -> Result<Vec<T>> {
    let stmt = client.prepare_cached(sql).await?;
    Ok(client
        .query(&stmt, params)
        .await?
        .iter()
        .map(from)
        .collect())
}

/// `err` as a domain error, `refusal` when it is a unique violation of
/// `constraint` (the store knows its constraints; callers know the rule).
pub(crate) fn unique_violation(
    err: tokio_postgres::Error,
    constraint: &str,
    refusal: impl FnOnce() -> Error,
) -> Error {
    let hit = err.as_db_error().is_some_and(|db| {
        db.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION
            && db.constraint() == Some(constraint)
    });
    if hit {
        refusal()
    } else {
        err.into()
    }
}
