//! Serving promoted models from memory: load in the background, swap atomically, keep the old
//! version when a new one fails to load.
//!
//! Each loaded version is a `TextEncoder` with a classifier on top (the same tokenizer thread,
//! length-sorted token-budget batching and model replicas as the embedding code), so
//! concurrent requests share forward passes. The table of served models is an `ArcSwap`: a
//! request takes its model's `Arc` once and finishes on it even if a swap happens meanwhile;
//! the old version's threads stop when its last request drops it, and hand its memory back.
//!
//! Announcements arrive by LISTEN on `registry::CHANNEL`; a poll every
//! `inference.reload_poll_secs` catches any missed while the connection was down, and so does
//! a read of the registry each time the listener reconnects. While Postgres is away the loaded
//! models keep answering from memory; a version that could not be read because the database
//! was unavailable is tried again at the next sync, not recorded as broken.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgListener;
use sqlx::PgPool;

use crate::config::Settings;
use crate::ml::classifier::{ClassifierSpec, TrainMode};
use crate::ml::text_encoder::{
    pick_device, ClassifierWeights, EncoderOptions, TextEncoder, ThreadWatch,
};
use crate::registry;

pub mod version_cache;

/// One loaded model version.
pub struct LoadedModel {
    pub name: String,
    pub version: i32,
    pub spec: ClassifierSpec,
    pub thresholds: Vec<f32>,
    pub loaded_at: DateTime<Utc>,
    encoder: TextEncoder,
}

impl LoadedModel {
    /// This version's encoder threads; they end (and its memory is released) once the version
    /// is swapped out and its last request is done.
    pub fn encoder_threads(&self) -> ThreadWatch {
        self.encoder.thread_watch()
    }

    /// Label probabilities per text, in the spec's label order.
    pub async fn scores(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, String> {
        use tracing::Instrument;
        let span = tracing::info_span!(
            "inference",
            model = %self.name,
            model.version = self.version,
            texts = texts.len(),
            pass_texts = tracing::field::Empty,
        );
        let encoded = self
            .encoder
            .encode(texts)
            .instrument(span.clone())
            .await
            .map_err(|e| e.to_string())?;
        // Each coalesced pass is counted once, by the request that opened it.
        if let Some(pass) = encoded.pass {
            span.record("pass_texts", pass.texts);
            let m = crate::telemetry::metrics();
            let attrs = [crate::telemetry::instruments::model(&self.name)];
            m.inference_batch_size.record(pass.texts as f64, &attrs);
            m.inference_duration.record(pass.seconds, &attrs);
        }
        Ok(encoded.vectors)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelStatus {
    pub name: String,
    /// The version being served from memory, if any.
    pub loaded_version: Option<i32>,
    pub loaded_at: Option<DateTime<Utc>>,
    /// The last version that failed to load, and why (the previous one keeps serving).
    pub failed_version: Option<i32>,
    pub error: Option<String>,
}

/// Why a version did not load: a fault of the version (kept as its load failure, never
/// retried) or of the database (retried at the next sync).
pub enum LoadError {
    Broken(String),
    DatabaseUnavailable(String),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Broken(m) => write!(f, "{m}"),
            LoadError::DatabaseUnavailable(m) => write!(f, "database unavailable: {m}"),
        }
    }
}

impl From<String> for LoadError {
    fn from(message: String) -> Self {
        LoadError::Broken(message)
    }
}

pub struct ModelServer {
    pool: PgPool,
    settings: Arc<Settings>,
    models: ArcSwap<HashMap<String, Arc<LoadedModel>>>,
    /// The most recently promoted model's name (served at the root endpoints by default).
    latest: ArcSwap<Option<String>>,
    failures: Mutex<HashMap<String, (i32, String)>>,
    /// Serialises loads, so two announcements never load the same version twice at once.
    load_lock: tokio::sync::Mutex<()>,
}

impl ModelServer {
    pub fn new(pool: PgPool, settings: Arc<Settings>) -> Arc<ModelServer> {
        Arc::new(ModelServer {
            pool,
            settings,
            models: ArcSwap::from_pointee(HashMap::new()),
            latest: ArcSwap::from_pointee(None),
            failures: Mutex::new(HashMap::new()),
            load_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Starts the listener and the poll in the background; returns at once.
    pub fn start(self: &Arc<Self>) {
        let server = self.clone();
        tokio::spawn(async move { server.listen().await });
        let server = self.clone();
        let every = Duration::from_secs_f64(self.settings.inference.reload_poll_secs.max(0.1));
        tokio::spawn(async move {
            // Both loops end when the pool is closed (the process or a test is shutting down).
            while !server.pool.is_closed() {
                server.sync().await;
                tokio::time::sleep(every).await;
            }
        });
    }

    async fn listen(self: Arc<Self>) {
        while !self.pool.is_closed() {
            let mut listener = match PgListener::connect_with(&self.pool).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!("model announcements: cannot connect: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if let Err(e) = listener.listen(registry::CHANNEL).await {
                tracing::warn!("model announcements: LISTEN failed: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            // Anything announced before LISTEN took effect.
            self.sync().await;
            loop {
                match listener.try_recv().await {
                    Ok(Some(note)) => {
                        tracing::info!(payload = note.payload(), "model promotion announced");
                        self.sync().await;
                    }
                    Ok(None) => {
                        // The connection was lost and the listener has already reconnected
                        // and listens again: whatever was announced in between is missed,
                        // so read the registry now rather than at the next poll.
                        tracing::info!("model announcements: reconnected");
                        self.sync().await;
                    }
                    Err(e) => {
                        tracing::warn!("model announcements: connection lost: {e}");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        break;
                    }
                }
            }
        }
    }

    /// Brings memory in line with the registry: loads every served version not yet loaded.
    pub async fn sync(&self) {
        let served = match registry::served_versions(&self.pool).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("reading served models: {e}");
                return;
            }
        };
        self.latest
            .store(Arc::new(served.first().map(|(name, _)| name.clone())));
        for (name, version) in served {
            let loaded = self.models.load().get(&name).map(|m| m.version);
            let failed = self
                .failures
                .lock()
                .ok()
                .and_then(|f| f.get(&name).map(|x| x.0));
            if loaded == Some(version) || failed == Some(version) {
                continue;
            }
            self.load(&name, version).await;
        }
    }

    async fn load(&self, name: &str, version: i32) {
        let _guard = self.load_lock.lock().await;
        if self.models.load().get(name).map(|m| m.version) == Some(version) {
            return;
        }
        tracing::info!(model = name, version, "loading model version");
        match self.build(name, version).await {
            Err(LoadError::DatabaseUnavailable(e)) => {
                // Not the version's fault: the next sync (announcement or poll) tries again.
                tracing::warn!(
                    model = name,
                    version,
                    "model version not loaded yet, the database is unavailable: {e}"
                );
            }
            Ok(model) => {
                let model = Arc::new(model);
                self.models.rcu(|current| {
                    let mut next = HashMap::clone(current);
                    next.insert(name.to_string(), model.clone());
                    next
                });
                if let Ok(mut f) = self.failures.lock() {
                    f.remove(name);
                }
                let m = crate::telemetry::metrics();
                let attrs = [crate::telemetry::instruments::model(name)];
                m.served_version.record(version as i64, &attrs);
                m.model_reloads.add(1, &attrs);
                tracing::info!(model = name, version, "model version now served");
            }
            Err(LoadError::Broken(e)) => {
                tracing::error!(
                    model = name,
                    version,
                    "model version failed to load, previous one keeps serving: {e}"
                );
                crate::telemetry::metrics()
                    .model_load_failures
                    .add(1, &[crate::telemetry::instruments::model(name)]);
                if let Ok(mut f) = self.failures.lock() {
                    f.insert(name.to_string(), (version, e));
                }
            }
        }
    }

    async fn build(&self, name: &str, version: i32) -> Result<LoadedModel, LoadError> {
        load_version(
            &self.pool,
            &self.settings,
            name,
            version,
            self.settings.inference.threads,
            Duration::from_millis(self.settings.inference.batch_wait_ms),
        )
        .await
    }

    pub fn get(&self, name: &str) -> Option<Arc<LoadedModel>> {
        self.models.load().get(name).cloned()
    }

    /// The model the root endpoints serve: `inference.default_model`, else the latest promoted.
    pub fn default_model_name(&self) -> Option<String> {
        let configured = &self.settings.inference.default_model;
        if !configured.is_empty() {
            return Some(configured.clone());
        }
        self.latest.load().as_ref().clone()
    }

    pub fn status(&self) -> Vec<ModelStatus> {
        let models = self.models.load();
        let failures = self.failures.lock().map(|f| f.clone()).unwrap_or_default();
        let mut names: Vec<&String> = models.keys().chain(failures.keys()).collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|name| {
                let loaded = models.get(name);
                let failed = failures.get(name);
                ModelStatus {
                    name: name.clone(),
                    loaded_version: loaded.map(|m| m.version),
                    loaded_at: loaded.map(|m| m.loaded_at),
                    failed_version: failed.map(|f| f.0),
                    error: failed.map(|f| f.1.clone()),
                }
            })
            .collect()
    }
}

/// Reads a version from the registry and starts its encoder threads (`threads` replicas on
/// CPU, 0 = all cores): what `serve` does on a promotion and a worker on a scoring chunk.
pub(crate) async fn load_version(
    pool: &PgPool,
    settings: &Settings,
    name: &str,
    version: i32,
    threads: i32,
    batch_wait: Duration,
) -> Result<LoadedModel, LoadError> {
    let stored = registry::load_version(pool, name, version)
        .await
        .map_err(|e| {
            if crate::db::is_unavailable(&e) {
                LoadError::DatabaseUnavailable(e.to_string())
            } else {
                LoadError::Broken(format!("database: {e}"))
            }
        })?
        .ok_or_else(|| format!("version {version} of `{name}` does not exist"))?;
    start_version(settings, stored, threads, batch_wait)
        .await
        .map_err(LoadError::Broken)
}

async fn start_version(
    settings: &Settings,
    stored: registry::StoredVersion,
    threads: i32,
    batch_wait: Duration,
) -> Result<LoadedModel, String> {
    let spec: ClassifierSpec =
        serde_json::from_value(stored.spec).map_err(|e| format!("bad spec: {e}"))?;
    let VersionEncoder {
        dir: model_dir,
        max_tokens,
        windows,
    } = version_encoder(settings, &spec, &stored.embedding_model)?;
    let options = EncoderOptions {
        model_dir,
        max_tokens,
        max_tokens_per_batch: settings.local_model.max_tokens_per_batch,
        threads,
        device: pick_device(settings.local_model.device),
        pooling: spec.pooling,
        classifier: Some(Arc::new(ClassifierWeights {
            spec: spec.clone(),
            blob: stored.weights,
        })),
        batch_wait,
        windows,
    };
    let encoder = tokio::task::spawn_blocking(move || TextEncoder::start(options))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let mut thresholds = stored.thresholds;
    thresholds.resize(spec.labels.len(), 0.5);
    Ok(LoadedModel {
        name: stored.name,
        version: stored.version,
        spec,
        thresholds,
        loaded_at: Utc::now(),
        encoder,
    })
}

/// What a version's text goes through before its head: the encoder folder, its truncation, and
/// (heads on a `long_texts = "windows"` model) the windows its training vectors pooled.
#[derive(Debug, Clone)]
pub struct VersionEncoder {
    pub dir: std::path::PathBuf,
    pub max_tokens: usize,
    pub windows: Option<crate::ml::text_encoder::Windows>,
}

/// The folder a version's encoder is built from, and its truncation. A head reads the
/// embedding model's vectors: only a local model can make them here, with its own truncation
/// and windows.
/// A finetuned encoder is served from its base model's folder (`spec.base_model`); one
/// finetuned before base models could be chosen has none and was trained from
/// `local_model.dir`. A base model no longer configured here is an error, never a fallback to
/// another folder.
pub fn version_encoder(
    settings: &Settings,
    spec: &ClassifierSpec,
    embedding_model: &str,
) -> Result<VersionEncoder, String> {
    let finetuned = |dir: std::path::PathBuf| VersionEncoder {
        dir,
        max_tokens: spec.max_tokens,
        windows: None,
    };
    match spec.mode {
        TrainMode::Finetune => match &spec.base_model {
            Some(base) => {
                let checkpoint = crate::embedding::local_checkpoint(settings, base)
                    .map_err(|e| format!("base model `{base}`: {e}"))?;
                Ok(finetuned(checkpoint.dir))
            }
            None => Ok(finetuned(settings.local_model.dir.clone().into())),
        },
        TrainMode::Head => {
            let model = settings
                .embedding_models
                .get(embedding_model)
                .ok_or_else(|| format!("embedding model `{embedding_model}` is not configured"))?;
            if !model.is_local() {
                return Err(format!(
                    "head models on `{embedding_model}` embeddings cannot be served: only a local model's"
                ));
            }
            let checkpoint = crate::embedding::local_checkpoint(settings, embedding_model)
                .map_err(|e| e.to_string())?;
            // A head on a windows model sees pooled windows, as its training vectors were.
            Ok(VersionEncoder {
                dir: checkpoint.dir,
                max_tokens: checkpoint.max_tokens,
                windows: checkpoint.windows,
            })
        }
    }
}

/// One prediction in the second seed's shape.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub predictions: Vec<(String, f32)>,
    pub positive_labels: Vec<String>,
    pub top_label: Option<String>,
    pub max_score: f32,
}

/// Positive labels are those scoring `>=` their threshold (the same comparison as training's
/// threshold tuning); the top label is the highest score.
pub fn decide(labels: &[String], scores: &[f32], thresholds: &[f32]) -> Prediction {
    let mut top: Option<(usize, f32)> = None;
    for (i, &s) in scores.iter().enumerate() {
        if top.is_none_or(|(_, best)| s > best) {
            top = Some((i, s));
        }
    }
    Prediction {
        predictions: labels.iter().cloned().zip(scores.iter().copied()).collect(),
        positive_labels: labels
            .iter()
            .zip(scores.iter().zip(thresholds))
            .filter(|(_, (s, t))| *s >= *t)
            .map(|(l, _)| l.clone())
            .collect(),
        top_label: top.map(|(i, _)| labels[i].clone()),
        max_score: top.map_or(0.0, |(_, s)| s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_score_equal_to_its_threshold_is_positive() {
        let labels = vec!["a".to_string(), "b".to_string()];
        let p = decide(&labels, &[0.5, 0.49], &[0.5, 0.5]);
        assert_eq!(p.positive_labels, vec!["a".to_string()]);
        assert_eq!(p.top_label.as_deref(), Some("a"));
        assert_eq!(p.max_score, 0.5);
    }
}
