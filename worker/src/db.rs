//! PostgreSQL for the job kinds that keep records there. Workers apply the same
//! migrations as the scheduler (under sqlx's advisory lock), whichever starts first.

use fleet_kit::postgres::{PgTls, describe_connect_error, is_tls_failure};
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::time::Duration;

/// The embedded migrations (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Connects, retrying while PostgreSQL is not up yet, and applies pending migrations; TLS
/// as the URL says (`?sslmode=`), else as [`fleet_kit::postgres`]'s default.
pub async fn connect_and_migrate(url: &str) -> anyhow::Result<PgPool> {
    connect_and_migrate_tls(url, &PgTls::default()).await
}

/// Like [`connect_and_migrate`], with the TLS settings `tls` (`[database_tls]`, over the
/// URL's). A failed TLS handshake is not retried: it says so, with the mode.
pub async fn connect_and_migrate_tls(url: &str, tls: &PgTls) -> anyhow::Result<PgPool> {
    let options = tls.connect_options(url).map_err(|e| anyhow::anyhow!("database_url: {e}"))?;
    let mode = options.get_ssl_mode();
    let mut delay = Duration::from_millis(500);
    let pool = loop {
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone());
        match pool.await {
            Ok(p) => break p,
            Err(e) if delay < Duration::from_secs(8) && !is_tls_failure(&e) => {
                tracing::warn!(error = %describe_connect_error(url, mode, &e), "PostgreSQL not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => anyhow::bail!("{}", describe_connect_error(url, mode, &e)),
        }
    };
    MIGRATOR.run(&pool).await.map_err(|e| anyhow::anyhow!("applying migrations failed: {e}"))?;
    Ok(pool)
}

/// PostgreSQL answers `SELECT 1` within `timeout` (getting a connection included).
pub async fn check(pool: &PgPool, timeout: Duration) -> fleet_jobs::health::Check {
    use fleet_jobs::health::Check;
    let query = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(pool);
    match tokio::time::timeout(timeout, query).await {
        Ok(Ok(_)) => Check::ok("postgres", "SELECT 1 answered"),
        Ok(Err(e)) => Check::failed("postgres", format!("SELECT 1 failed: {e}")),
        Err(_) => Check::failed("postgres", format!("no answer to SELECT 1 within {} ms", timeout.as_millis())),
    }
}
