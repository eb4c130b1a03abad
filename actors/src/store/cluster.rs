//! The statements of the embedded cluster's launcher, run over a plain
//! connection before any pool exists.

/// Creates database `name` if it does not exist, connecting with `url` (to
/// another database of the cluster, e.g. `postgres`).
pub async fn ensure_database(url: &str, name: &str) -> anyhow::Result<()> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let task = tokio::spawn(conn);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        client
            .batch_execute(&format!(
                "CREATE DATABASE \"{}\"",
                name.replace('"', "\"\"")
            ))
            .await?;
    }
    drop(client);
    let _ = task.await;
    Ok(())
}

/// Where `url` points, for messages: host(s), port(s), database and user,
/// never the password.
pub fn describe_target(url: &str) -> String {
    let Ok(cfg) = url.parse::<tokio_postgres::Config>() else {
        return "an unparsable database url".to_string();
    };
    let hosts: Vec<String> = cfg
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => format!("socket {}", path.display()),
        })
        .collect();
    let ports: Vec<String> = cfg.get_ports().iter().map(u16::to_string).collect();
    format!(
        "{} port {} (database {}, user {})",
        if hosts.is_empty() {
            "localhost".to_string()
        } else {
            hosts.join(",")
        },
        if ports.is_empty() {
            "5432".to_string()
        } else {
            ports.join(",")
        },
        cfg.get_dbname().unwrap_or("(default)"),
        cfg.get_user().unwrap_or("(default)"),
    )
}

/// Whether a failed connection attempt may succeed later (the server is not
/// up yet, or is starting), as opposed to a refusal that waiting cannot fix
/// (bad password, no such database).
fn worth_retrying(err: &tokio_postgres::Error) -> bool {
    match err.code() {
        Some(code) => code.code().starts_with("57P") || code.code().starts_with("08"),
        None => true,
    }
}

/// The innermost cause of a connection error ("Connection refused (os error
/// 111)", "password authentication failed for user …").
fn cause(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        return db.message().to_string();
    }
    let mut source: &dyn std::error::Error = err;
    while let Some(next) = source.source() {
        source = next;
    }
    source.to_string()
}

/// Connects once, retrying for up to `wait` while the database is unreachable
/// (so that scriptd can start beside its database, e.g. in a compose file).
/// The error names the target (never the password) and what to check.
pub async fn wait_until_reachable(
    url: &str,
    wait: std::time::Duration,
    connect_timeout: std::time::Duration,
) -> anyhow::Result<()> {
    let mut cfg: tokio_postgres::Config = url
        .parse()
        .map_err(|e| anyhow::anyhow!("the database url is invalid: {e}"))?;
    cfg.connect_timeout(connect_timeout);
    let target = describe_target(url);
    let deadline = tokio::time::Instant::now() + wait;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let err = match cfg.connect(tokio_postgres::NoTls).await {
            Ok((client, conn)) => {
                drop(client);
                let _ = conn.await;
                return Ok(());
            }
            Err(e) => e,
        };
        let retry = worth_retrying(&err);
        if !retry || tokio::time::Instant::now() >= deadline {
            let waited = if retry {
                format!(
                    " (retried for {} s, database.startup_wait_secs)",
                    wait.as_secs()
                )
            } else {
                String::new()
            };
            anyhow::bail!(
                "cannot connect to PostgreSQL at {target}: {}{waited}. Check that PostgreSQL is \
                 running and reachable there, and database.url (DATABASE_URL); leave it empty to \
                 use the embedded PostgreSQL.",
                cause(&err)
            );
        }
        if attempt == 1 {
            tracing::warn!(%target, error = %cause(&err), wait_secs = wait.as_secs(), "PostgreSQL is not reachable yet; retrying");
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}
