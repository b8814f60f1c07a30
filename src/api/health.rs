//! Liveness (`/health`) and readiness with details (`/api/v1/health`).
use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi, Tags};

use super::AppState;

#[derive(Tags)]
enum ApiTags {
    /// Liveness and readiness.
    Health,
}

#[derive(Debug, Object)]
pub struct Liveness {
    pub status: String,
    /// The served classifier, once one is promoted.
    #[oai(nullable)]
    pub model: Option<String>,
}

#[derive(Debug, Object)]
pub struct QueueDepth {
    pub queue: String,
    pub waiting: i64,
    pub running: i64,
}

#[derive(Debug, Object)]
pub struct EmbeddingModelInfo {
    pub name: String,
    pub dimensions: usize,
    #[oai(rename = "type")]
    pub provider: String,
    pub max_tokens: usize,
    pub max_batch_size: usize,
    /// For API models: whether the key variable is set.
    #[oai(nullable)]
    pub api_key_present: Option<bool>,
}

#[derive(Debug, Object)]
pub struct Health {
    /// ok | degraded
    pub status: String,
    pub database: String,
    #[oai(nullable)]
    pub database_latency_ms: Option<f64>,
    pub migrations_applied: usize,
    pub migrations_known: usize,
    pub queues: Vec<QueueDepth>,
    /// Workers whose heartbeat is recent.
    pub live_workers: Vec<String>,
    pub embedding_models: Vec<EmbeddingModelInfo>,
    pub libtorch: String,
    pub cuda_devices: i64,
    /// Models served from this process's memory, with any load failure.
    pub served_models: Vec<ServedModel>,
}

#[derive(Debug, Object)]
pub struct ServedModel {
    pub name: String,
    #[oai(nullable)]
    pub loaded_version: Option<i32>,
    #[oai(nullable)]
    pub failed_version: Option<i32>,
    #[oai(nullable)]
    pub error: Option<String>,
}

pub fn model_infos(state: &AppState) -> Vec<EmbeddingModelInfo> {
    state
        .settings
        .embedding_models
        .values()
        .map(|m| EmbeddingModelInfo {
            name: m.name.clone(),
            dimensions: m.dimensions,
            provider: match m.provider {
                crate::config::ProviderType::Local => "local".into(),
                crate::config::ProviderType::OpenAiCompatible => "openai-compatible".into(),
            },
            max_tokens: m.max_tokens,
            max_batch_size: m.max_batch_size,
            api_key_present: m.api_key_env.as_ref().map(|v| std::env::var(v).is_ok()),
        })
        .collect()
}

pub struct HealthApi;

#[OpenApi(tag = "ApiTags::Health")]
impl HealthApi {
    /// Liveness: the process answers.
    #[oai(path = "/health", method = "get")]
    async fn liveness(&self, state: Data<&AppState>) -> Json<Liveness> {
        // The second seed's shape: {"status":"ok","model":NAME}, NAME being the served default.
        let model = state
            .models
            .default_model_name()
            .filter(|name| state.models.get(name).is_some());
        Json(Liveness {
            status: "ok".into(),
            model,
        })
    }

    /// Readiness: database, migrations, queue depths, live workers, embedding models.
    #[oai(path = "/api/v1/health", method = "get")]
    async fn health(&self, state: Data<&AppState>) -> Json<Health> {
        let started = std::time::Instant::now();
        let db_ok = sqlx::query("SELECT 1").execute(&state.pool).await.is_ok();
        let latency = started.elapsed().as_secs_f64() * 1000.0;
        // With the database down, each further query would wait out the pool's acquire
        // timeout: answer at once instead.
        let (applied, known) = if db_ok {
            crate::db::migration_state(&state.pool)
                .await
                .unwrap_or((0, 0))
        } else {
            (0, crate::db::MIGRATOR.iter().count())
        };
        let window = (state.settings.queue.heartbeat_secs
            * state.settings.queue.missed_heartbeats as u64) as f64;
        let (queues, workers) = if db_ok {
            (
                crate::queue::queue_depths(&state.pool)
                    .await
                    .unwrap_or_default(),
                crate::queue::live_workers(&state.pool, window)
                    .await
                    .unwrap_or_default(),
            )
        } else {
            (Vec::new(), Vec::new())
        };
        Json(Health {
            status: if db_ok && applied == known {
                "ok"
            } else {
                "degraded"
            }
            .into(),
            database: if db_ok { "ok" } else { "unreachable" }.into(),
            database_latency_ms: db_ok.then_some(latency),
            migrations_applied: applied,
            migrations_known: known,
            queues: queues
                .into_iter()
                .map(|(queue, waiting, running)| QueueDepth {
                    queue,
                    waiting,
                    running,
                })
                .collect(),
            live_workers: workers.into_iter().map(|w| w.0).collect(),
            embedding_models: model_infos(&state),
            libtorch: crate::ml::libtorch_version(),
            cuda_devices: crate::ml::cuda_devices(),
            served_models: state
                .models
                .status()
                .into_iter()
                .map(|m| ServedModel {
                    name: m.name,
                    loaded_version: m.loaded_version,
                    failed_version: m.failed_version,
                    error: m.error,
                })
                .collect(),
        })
    }
}
