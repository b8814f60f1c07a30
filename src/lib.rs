//! trainyard: labelled text in, built and embedded datasets out (and, next, served classifiers).
//!
//! See README.md for the bird's-eye view, the code map and the invariants.
pub mod api;
pub mod artifacts;
pub mod auth;
pub mod cli;
pub mod config;
pub mod datasets;
pub mod db;
pub mod embedding;
pub mod inference;
pub mod job_kind;
pub mod job_registry;
pub mod ml;
pub mod queue;
pub mod registry;
pub mod review;
pub mod scoring;
pub mod secrets;
pub mod streamed_export;
pub mod telemetry;
pub mod training;
pub mod worker_state;

use std::sync::Arc;

/// Installs the TLS crypto provider, logging (RUST_LOG, default info; text or JSON), trace
/// export when `OTEL_*` configures it, and the metrics pipeline.
pub fn init_process(log_format: telemetry::LogFormat) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    telemetry::init(log_format);
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
