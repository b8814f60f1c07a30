//! trainyard: labelled text in, built and embedded datasets out (and, next, served classifiers).
//!
//! See README.md for the bird's-eye view, the code map and the invariants.
pub mod api;
pub mod cli;
pub mod config;
pub mod datasets;
pub mod db;
pub mod embedding;
pub mod inference;
pub mod ml;
pub mod queue;
pub mod registry;
pub mod training;

use std::sync::Arc;

/// Installs the TLS crypto provider and the log subscriber (RUST_LOG, default info).
pub fn init_process() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,sqlx=warn,apalis=warn,apalis_postgres=warn,apalis_core=warn",
        )
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Loads config, connects, migrates: what every server-side command starts with.
pub async fn start(migrate: bool) -> anyhow::Result<(Arc<config::Settings>, sqlx::PgPool)> {
    let settings = Arc::new(config::Settings::load(&config::Settings::default_dir())?);
    let pool = db::connect(&settings.database).await?;
    if migrate {
        db::migrate(&pool).await?;
    }
    Ok((settings, pool))
}
