//! The services every job handler can reach in a worker process: the pool, the settings, the
//! embedding models and the model versions loaded for scoring. Shared by the domain handlers;
//! knows none of them.
use std::sync::Arc;

use sqlx::PgPool;

use crate::config::Settings;
use crate::embedding::Embedders;
use crate::inference::version_cache::VersionCache;

/// What every job handler can reach.
#[derive(Clone)]
pub struct WorkerState {
    pub pool: PgPool,
    pub settings: Arc<Settings>,
    pub embedders: Embedders,
    /// Model versions loaded by this process's `score` jobs.
    pub scorers: Arc<VersionCache>,
}
