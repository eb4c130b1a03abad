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
