//! A worker's loaded model versions for batch scoring: each (model, version) is loaded once
//! per process and kept while chunks of it keep coming; the least recently used goes when a
//! new one needs room.
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use super::{load_version, LoadError, LoadedModel};
use crate::config::Settings;

/// Versions a worker keeps loaded at once (a finetuned version holds ~90 MB of weights per
/// replica).
const KEEP: usize = 2;

type Entry = (String, i32, Arc<LoadedModel>, Instant);

#[derive(Default)]
pub struct VersionCache {
    loaded: tokio::sync::Mutex<Vec<Entry>>,
}

impl VersionCache {
    /// The loaded version, loading it first when this process has not yet.
    pub async fn get(
        &self,
        pool: &PgPool,
        settings: &Settings,
        name: &str,
        version: i32,
    ) -> Result<Arc<LoadedModel>, LoadError> {
        // Held across the load: two chunks of a version that is not loaded yet load it once.
        let mut loaded = self.loaded.lock().await;
        if let Some(entry) = loaded.iter_mut().find(|e| e.0 == name && e.1 == version) {
            entry.3 = Instant::now();
            return Ok(entry.2.clone());
        }
        let model = Arc::new(
            load_version(
                pool,
                settings,
                name,
                version,
                settings.scoring.threads,
                Duration::ZERO,
            )
            .await?,
        );
        if loaded.len() >= KEEP {
            loaded.sort_by_key(|e| std::cmp::Reverse(e.3));
            loaded.truncate(KEEP - 1);
        }
        loaded.push((name.to_string(), version, model.clone(), Instant::now()));
        tracing::info!(model = name, version, "model version loaded for scoring");
        Ok(model)
    }
}
