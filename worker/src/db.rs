//! PostgreSQL for the job kinds that keep records there. Workers apply the same
//! migrations as the scheduler (under sqlx's advisory lock), whichever starts first.

use sqlx::postgres::{PgPool, PgPoolOptions};
use std::time::Duration;

/// The embedded migrations (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Connects, retrying while PostgreSQL is not up yet, and applies pending migrations.
pub async fn connect_and_migrate(url: &str) -> anyhow::Result<PgPool> {
    let mut delay = Duration::from_millis(500);
    let pool = loop {
        match PgPoolOptions::new().max_connections(10).acquire_timeout(Duration::from_secs(5)).connect(url).await {
            Ok(p) => break p,
            Err(e) if delay < Duration::from_secs(8) => {
                tracing::warn!(error = %e, "PostgreSQL not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => anyhow::bail!("PostgreSQL is not reachable: {e}"),
        }
    };
    MIGRATOR.run(&pool).await.map_err(|e| anyhow::anyhow!("applying migrations failed: {e}"))?;
    Ok(pool)
}
