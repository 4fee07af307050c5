//! PostgreSQL: the pool and the migrations in `migrations/`, embedded in the binary and
//! applied at start-up. sqlx holds a PostgreSQL advisory lock while it migrates, so
//! replicas starting at once apply each migration once.

use fleet_kit::postgres::{PgTls, describe_connect_error};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::time::Duration;

/// The embedded migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Connects (5 s timeout to get a connection) and applies pending migrations; TLS as the
/// URL says (`?sslmode=`), else as [`fleet_kit::postgres`]'s default.
pub async fn connect_and_migrate(url: &str) -> anyhow::Result<PgPool> {
    connect_and_migrate_tls(url, &PgTls::default(), None).await
}

/// Like [`connect_and_migrate`], and every statement of the returned pool is cancelled by
/// PostgreSQL after `statement_timeout` (see [`connect_and_migrate_tls`]).
pub async fn connect_and_migrate_with(url: &str, statement_timeout: Option<Duration>) -> anyhow::Result<PgPool> {
    connect_and_migrate_tls(url, &PgTls::default(), statement_timeout).await
}

/// Connects with the TLS settings `tls` (`[database_tls]`, over the URL's) and applies
/// pending migrations; every statement of the returned pool is cancelled by PostgreSQL
/// after `statement_timeout` if given (its `statement_timeout` setting, per connection),
/// so one slow query cannot hold a pooled connection for long. Migrations run before, on a
/// connection without the limit. A failed TLS handshake says so, with the mode.
pub async fn connect_and_migrate_tls(
    url: &str,
    tls: &PgTls,
    statement_timeout: Option<Duration>,
) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions =
        tls.connect_options(url).map_err(|e| anyhow::anyhow!("PostgreSQL URL {}: {e}", redacted(url)))?;
    let mode = options.get_ssl_mode();
    // The sqlx error stays in the chain, so callers can tell a TLS failure (not retried).
    let unreachable = |e: sqlx::Error| {
        let message = describe_connect_error(url, mode, &e);
        anyhow::Error::new(e).context(message)
    };
    let pool_options = || PgPoolOptions::new().max_connections(10).acquire_timeout(Duration::from_secs(5));
    let Some(limit) = statement_timeout.filter(|d| !d.is_zero()) else {
        let pool = pool_options().connect_with(options).await.map_err(unreachable)?;
        MIGRATOR.run(&pool).await.map_err(|e| anyhow::anyhow!("applying migrations failed: {e}"))?;
        return Ok(pool);
    };
    {
        let migrating = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
            .await
            .map_err(unreachable)?;
        MIGRATOR.run(&migrating).await.map_err(|e| anyhow::anyhow!("applying migrations failed: {e}"))?;
        migrating.close().await;
    }
    let options = options.options([("statement_timeout", format!("{}ms", limit.as_millis()))]);
    pool_options().connect_with(options).await.map_err(unreachable)
}

/// A database URL without its password (or query), for messages: `fleet_net::redact_url`.
pub fn redacted(url: &str) -> String {
    fleet_net::redact_url(url)
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
