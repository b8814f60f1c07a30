//! Liveness (`/health`) and readiness with details (`/api/v1/health`).
//!
//! Both answer 200 while the process can serve (predictions come from memory), and both say
//! when the database is away: `status` turns `degraded` and `database` `unavailable`. The
//! database check waits at most [`DATABASE_PROBE_TIMEOUT`] (not the pool's 2 s acquire timeout)
//! and its result is reused for [`DATABASE_PROBE_FRESH_FOR`], so a probe never hangs and a
//! burst of probes during an outage costs one check.
use std::time::Duration;

use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi, Tags};

use super::AppState;

#[derive(Tags)]
enum ApiTags {
    /// Liveness and readiness.
    Health,
}

/// The longest a health check waits for the database.
pub const DATABASE_PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a database check's result is reused.
pub const DATABASE_PROBE_FRESH_FOR: Duration = Duration::from_secs(1);

/// The process as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum HealthStatus {
    Ok,
    /// Something it depends on (the database, a migration) is missing.
    Degraded,
}

/// The database as the last check found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum DatabaseState {
    Ok,
    /// No answer within 0.5 s, or an error.
    Unavailable,
}

impl DatabaseState {
    fn of(reachable: bool) -> DatabaseState {
        if reachable {
            DatabaseState::Ok
        } else {
            DatabaseState::Unavailable
        }
    }
}

/// The second seed's `{"status":"ok","model":NAME}`, plus the database's state.
#[derive(Debug, Object)]
pub struct Liveness {
    /// `ok`, or `degraded` while the database is unavailable: the process still answers and
    /// serves predictions from memory, but nothing that needs the database works.
    pub status: HealthStatus,
    /// The served classifier, once one is promoted.
    #[oai(nullable)]
    pub model: Option<String>,
    /// `ok` | `unavailable` (no answer within 0.5 s, checked at most once a second).
    pub database: DatabaseState,
}

#[derive(Debug, Object)]
pub struct QueueDepth {
    pub queue: String,
    /// Jobs that will run: pending, or failed with attempts left.
    pub waiting: i64,
    pub running: i64,
    /// Since when the longest-waiting job could have run; absent when none waits.
    #[oai(skip_serializing_if_is_none)]
    pub oldest_waiting_at: Option<chrono::DateTime<chrono::Utc>>,
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
    /// `ok`, or `degraded` when the database is unavailable or migrations are missing.
    pub status: HealthStatus,
    /// `ok` | `unavailable` (no answer within 0.5 s, checked at most once a second).
    pub database: DatabaseState,
    /// The check's round trip; null while the database is unavailable.
    #[oai(nullable)]
    pub database_latency_ms: Option<f64>,
    pub migrations_applied: usize,
    pub migrations_known: usize,
    /// The fields below describe the deployment (host names, versions, load errors): they are
    /// present for a token with scope `read` (or with auth off), absent otherwise.
    #[oai(skip_serializing_if_is_none)]
    pub queues: Option<Vec<QueueDepth>>,
    /// Workers whose heartbeat is recent.
    #[oai(skip_serializing_if_is_none)]
    pub live_workers: Option<Vec<String>>,
    #[oai(skip_serializing_if_is_none)]
    pub embedding_models: Option<Vec<EmbeddingModelInfo>>,
    #[oai(skip_serializing_if_is_none)]
    pub libtorch: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub cuda_devices: Option<i64>,
    /// Models served from this process's memory, with any load failure.
    #[oai(skip_serializing_if_is_none)]
    pub served_models: Option<Vec<ServedModel>>,
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
            provider: m.provider.type_name().into(),
            max_tokens: m.max_tokens,
            max_batch_size: m.max_batch_size,
            api_key_present: m.provider.api_key_env().map(|v| std::env::var(v).is_ok()),
        })
        .collect()
}

pub struct HealthApi;

#[OpenApi(tag = "ApiTags::Health")]
impl HealthApi {
    /// Liveness: the process answers (200 also while the database is unavailable: the served
    /// model keeps predicting from memory; `status` is then `degraded`).
    #[oai(path = "/health", method = "get")]
    async fn liveness(&self, state: Data<&AppState>) -> Json<Liveness> {
        // The second seed's shape: {"status":"ok","model":NAME}, NAME being the served default.
        let model = state
            .models
            .default_model_name()
            .filter(|name| state.models.get(name).is_some());
        let reachable = state.database.check().await.is_reachable();
        Json(Liveness {
            status: if reachable {
                HealthStatus::Ok
            } else {
                HealthStatus::Degraded
            },
            model,
            database: DatabaseState::of(reachable),
        })
    }

    /// Readiness: database and migrations for anyone; with a `read` token (or auth off) also
    /// queue depths, live workers, embedding models, libtorch, CUDA and served models.
    #[oai(path = "/api/v1/health", method = "get")]
    async fn health(&self, req: &poem::Request, state: Data<&AppState>) -> Json<Health> {
        let detailed = !state.gate.policy.enabled
            || req
                .data::<crate::auth::Principal>()
                .is_some_and(|p| crate::auth::grants(&p.scopes, crate::auth::Scope::Read));
        let latency = match state.database.check().await {
            crate::db::Reachability::Reachable { latency_ms } => Some(latency_ms),
            crate::db::Reachability::Unavailable => None,
        };
        let db_ok = latency.is_some();
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
        let (queues, workers) = if db_ok && detailed {
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
                HealthStatus::Ok
            } else {
                HealthStatus::Degraded
            },
            database: DatabaseState::of(db_ok),
            database_latency_ms: latency,
            migrations_applied: applied,
            migrations_known: known,
            queues: detailed.then(|| {
                queues
                    .into_iter()
                    .map(|d| QueueDepth {
                        queue: d.queue,
                        waiting: d.waiting,
                        running: d.running,
                        oldest_waiting_at: d.oldest_waiting_since,
                    })
                    .collect()
            }),
            live_workers: detailed.then(|| workers.into_iter().map(|w| w.0).collect()),
            embedding_models: detailed.then(|| model_infos(&state)),
            libtorch: detailed.then(crate::ml::libtorch_version),
            cuda_devices: detailed.then(crate::ml::cuda_devices),
            served_models: detailed.then(|| {
                state
                    .models
                    .status()
                    .into_iter()
                    .map(|m| ServedModel {
                        name: m.name,
                        loaded_version: m.loaded_version,
                        failed_version: m.failed_version,
                        error: m.error,
                    })
                    .collect()
            }),
        })
    }
}
