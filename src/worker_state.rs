//! The services every job handler can reach in a worker process: the pool, the settings and
//! the embedding models. Shared by the domain handlers; knows none of them.
use std::sync::Arc;

use sqlx::PgPool;

use crate::config::Settings;
use crate::embedding::Embedders;

/// What every job handler can reach.
#[derive(Clone)]
pub struct WorkerState {
    pub pool: PgPool,
    pub settings: Arc<Settings>,
    pub embedders: Embedders,
}
