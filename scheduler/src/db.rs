//! PostgreSQL: the pool and the migrations in `migrations/`, embedded in the binary and
//! applied at start-up. sqlx holds a PostgreSQL advisory lock while it migrates, so
//! replicas starting at once apply each migration once.

use sqlx::postgres::{PgPool, PgPoolOptions};
use std::time::Duration;

/// The embedded migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Connects (2 s timeout per connection attempt) and applies pending migrations.
pub async fn connect_and_migrate(url: &str) -> anyhow::Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| anyhow::anyhow!("PostgreSQL is not reachable at {}: {e}", redacted(url)))?;
    MIGRATOR.run(&pool).await.map_err(|e| anyhow::anyhow!("applying migrations failed: {e}"))?;
    Ok(pool)
}

/// A database URL without its password, for messages.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}
