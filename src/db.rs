//! The Postgres pool and migrations (apalis's, then trainyard's own).
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::config::DatabaseSettings;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connects lazily-retrying: a pool reconnects by itself after Postgres restarts.
pub async fn connect(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = settings
        .url
        .parse()
        .map_err(|e| anyhow::anyhow!("database.url is not a valid Postgres URL: {e}"))?;
    let pool = PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .test_before_acquire(true)
        .connect_with(options)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to the database (database.url): {e}"))?;
    Ok(pool)
}

/// Applies apalis's migrations (schema `apalis`) and then ours. Idempotent.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("CREATE EXTENSION IF NOT EXISTS hstore")
        .execute(pool)
        .await?;
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pgcrypto")
        .execute(pool)
        .await?;
    apalis_postgres::PostgresStorage::<()>::setup(pool)
        .await
        .map_err(|e| anyhow::anyhow!("apalis migrations: {e}"))?;
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// (applied, known) counts of trainyard's own migrations, for `doctor` and health.
pub async fn migration_state(pool: &PgPool) -> anyhow::Result<(usize, usize)> {
    let known = MIGRATOR.iter().count();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
        .unwrap_or(0);
    Ok((applied as usize, known))
}
