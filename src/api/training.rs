//! `/api/v1/training-runs`: start a run, follow it, read its metrics and curves, cancel it.
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::{Json, PlainText};
use poem_openapi::{OpenApi, Tags};
use sqlx::Row;
use trainyard_jobs::{JobKind, TrainArgs};
use uuid::Uuid;

use super::errors::ApiError;
use super::training_schema::*;
use super::{page_bounds, AppState};
use crate::ml::classifier::TrainMode;
use crate::queue::{self, NewJob};
use crate::training::curves::{render_curves, EpochPoint};
use crate::training::webhook::WebhookConfig;

#[derive(Tags)]
enum ApiTags {
    /// Training runs: head (MLP on stored embeddings) or finetune (MiniLM end to end).
    Training,
}

fn row_to_run(r: &sqlx::postgres::PgRow) -> TrainingRun {
    let step: i64 = r.get("global_step");
    let total: i64 = r.get("total_steps");
    let sps: Option<f64> = r.get("samples_per_sec");
    let hp: serde_json::Value = r.get("hyperparameters");
    let batch = hp.get("batch_size").and_then(|b| b.as_f64()).unwrap_or(1.0);
    let status: String = r.get("status");
    let eta = match (status.as_str(), sps) {
        ("running", Some(s)) if s > 0.0 => Some((total - step).max(0) as f64 * batch / s),
        _ => None,
    };
    TrainingRun {
        id: r.get("id"),
        dataset_id: r.get("dataset_id"),
        model_name: r.get("model_name"),
        mode: r.get("mode"),
        task: r.get("task"),
        labels: serde_json::from_value(r.get("labels")).unwrap_or_default(),
        hyperparameters: hp,
        base_model: r.get("base_model"),
        device: r.get("device"),
        device_used: r.get("device_used"),
        auto_promote: r.get("auto_promote"),
        promotion_gate: r.get("promotion_gate"),
        gate_evaluation_id: r.get("gate_evaluation_id"),
        status,
        job_id: r.get("job_id"),
        error: r
            .get::<Option<String>, _>("error")
            .map(|e| e.trim_start_matches("AbortError: ").to_string()),
        progress: RunProgress {
            global_step: step,
            total_steps: total,
            epoch: r.get("epoch"),
            total_epochs: r.get("total_epochs"),
            samples_per_sec: sps,
            eta_secs: eta,
        },
        best_epoch: r.get("best_epoch"),
        best_metric: r.get("best_metric"),
        validation_metrics: r.get("validation_metrics"),
        test_metrics: r.get("test_metrics"),
        thresholds: r.get("thresholds"),
        telemetry: r.get("telemetry"),
        resumed_from: r.get("resumed_from"),
        model_version: r.get("model_version"),
        created_at: r.get("created_at"),
        started_at: r.get("started_at"),
        finished_at: r.get("finished_at"),
    }
}

/// The checkpoint a finetune starts from: the request's `base_model`, else the dataset's
/// embedding model when it is local, else the default embedding model. It must be a local
/// model whose folder this server can see (a worker on another machine resolves the same key
/// in its own configuration). `max_tokens` must fit the model's longest input.
fn finetune_base(
    state: &AppState,
    requested: Option<&str>,
    dataset_model: &str,
    max_tokens: usize,
) -> Result<String, ApiError> {
    let models = &state.settings.embedding_models;
    let is_local = |key: &str| {
        models
            .get(key)
            .is_some_and(|m| m.provider == crate::config::ProviderType::Local)
    };
    let key = match requested {
        Some(key) => {
            if !is_local(key) {
                let local: Vec<&String> = models
                    .iter()
                    .filter(|(k, _)| is_local(k))
                    .map(|(k, _)| k)
                    .collect();
                return Err(ApiError::unprocessable(
                    "unknown_base_model",
                    format!(
                        "base_model `{key}` is not a local embedding model; local ones: {local:?}"
                    ),
                    Some("base_model"),
                ));
            }
            key.to_string()
        }
        None if is_local(dataset_model) => dataset_model.to_string(),
        // A dataset of a provider's embeddings: the default model when it is local, else the
        // local model on `local_model.dir` (what every finetune started from before base
        // models could be chosen), else any local one.
        None => {
            let default = &state.settings.datasets.default_embedding_model;
            if is_local(default) {
                default.clone()
            } else {
                models
                    .iter()
                    .filter(|(k, _)| is_local(k))
                    .min_by_key(|(_, m)| m.dir.is_some())
                    .map(|(k, _)| k.clone())
                    .ok_or_else(|| {
                        ApiError::unprocessable(
                            "no_local_model",
                            "finetune needs a local embedding model to start from; none is configured",
                            Some("mode"),
                        )
                    })?
            }
        }
    };
    let unavailable = |e: String| {
        ApiError::unprocessable(
            "base_model_unavailable",
            format!("finetune cannot start from `{key}`: {e}"),
            Some(if requested.is_some() {
                "base_model"
            } else {
                "mode"
            }),
        )
    };
    let checkpoint = crate::embedding::local_checkpoint(&state.settings, &key)
        .map_err(|e| unavailable(e.to_string()))?;
    let config = crate::ml::encoder::EncoderConfig::from_file(&checkpoint.dir.join("config.json"))
        .map_err(|e| unavailable(format!("{e:#}")))?;
    if max_tokens as i64 > config.shape.max_input_tokens {
        return Err(ApiError::unprocessable(
            "invalid_hyperparameter",
            format!(
                "hyperparameters.max_tokens {max_tokens} is more than the {} tokens base model `{key}` ({}) takes",
                config.shape.max_input_tokens, config.family.name
            ),
            Some("max_tokens"),
        ));
    }
    Ok(key)
}

async fn fetch_run(state: &AppState, id: Uuid) -> Result<TrainingRun, ApiError> {
    let row = sqlx::query(
        "SELECT r.*, (SELECT e.id FROM evaluations e WHERE e.run_id = r.id) AS gate_evaluation_id
         FROM training_runs r WHERE r.id = $1",
    )
    .bind(id)
    .fetch_optional(&state.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("training run", id))?;
    Ok(row_to_run(&row))
}

pub struct TrainingApi;

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Training")]
impl TrainingApi {
    /// Start a training run on a ready dataset: enqueues a `train` job.
    #[oai(path = "/training-runs", method = "post")]
    async fn create(
        &self,
        req: &poem::Request,
        state: Data<&AppState>,
        body: Json<CreateTrainingRun>,
    ) -> Result<Created, ApiError> {
        let body = body.0;
        // Promotion is an `admin` action: starting a run that promotes itself is one too.
        if body.auto_promote || body.promotion_gate.is_some() {
            let param = if body.auto_promote {
                "auto_promote"
            } else {
                "promotion_gate"
            };
            super::auth::require(req, crate::auth::Scope::Admin, param)?;
        }
        if !valid_model_name(&body.model_name) {
            return Err(ApiError::bad_request(
                "model_name must be 1-64 characters of A-Z, a-z, 0-9, '.', '_' or '-'",
                Some("model_name"),
            ));
        }
        let device = body.device.unwrap_or(DeviceIn::Auto).as_str().to_string();
        let webhook = match body.webhook {
            Some(w) => {
                let policy = crate::training::webhook::AddressPolicy::allowing(
                    &state.settings.training.webhook_allowed_hosts,
                );
                if let Err(why) = policy.check_resolved(&w.url).await {
                    return Err(ApiError::unprocessable(
                        "invalid_webhook",
                        format!("webhook.url: {why}"),
                        Some("webhook.url"),
                    ));
                }
                let authorization = match w.authorization {
                    None => None,
                    Some(plain) => {
                        let var = &state.settings.training.secrets_key_env;
                        let sealer = crate::secrets::SecretBox::from_env(var)
                            .map_err(ApiError::internal)?
                            .ok_or_else(|| {
                                ApiError::unprocessable(
                                    "secrets_key_missing",
                                    format!(
                                        "webhook.authorization would be stored, and this server \
                                         stores credentials only sealed: set {var} (base64 of 32 \
                                         random bytes) on API and workers"
                                    ),
                                    Some("webhook.authorization"),
                                )
                            })?;
                        Some(sealer.seal(&plain).map_err(ApiError::internal)?)
                    }
                };
                Some(WebhookConfig::new(w.url, authorization))
            }
            None => None,
        };
        let dataset = crate::datasets::store::get(&state.pool, body.dataset_id)
            .await?
            .ok_or_else(|| {
                ApiError::unprocessable(
                    "unknown_dataset",
                    format!("dataset {} does not exist", body.dataset_id),
                    Some("dataset_id"),
                )
            })?;
        if dataset.status != "ready" {
            return Err(ApiError::conflict(format!(
                "dataset {} is {}; training needs a ready dataset",
                dataset.id, dataset.status
            )));
        }
        let spec = dataset.spec().map_err(ApiError::internal)?;
        let mode = match body.mode.unwrap_or(ModeIn::Head) {
            ModeIn::Head => TrainMode::Head,
            ModeIn::Finetune => TrainMode::Finetune,
        };
        let hp = resolve_hyperparameters(mode, spec.task_type, body.hyperparameters)?;
        let base_model = match mode {
            TrainMode::Head => {
                if body.base_model.is_some() {
                    return Err(ApiError::unprocessable(
                        "invalid_base_model",
                        "base_model is for finetune runs; a head reads the dataset's embeddings",
                        Some("base_model"),
                    ));
                }
                None
            }
            TrainMode::Finetune => Some(finetune_base(
                &state,
                body.base_model.as_deref(),
                &dataset.embedding_model,
                hp.max_tokens,
            )?),
        };
        let gate = match &body.promotion_gate {
            None => None,
            Some(_) if !body.auto_promote => {
                return Err(ApiError::unprocessable(
                    "invalid_promotion_gate",
                    "promotion_gate needs auto_promote: true",
                    Some("promotion_gate"),
                ))
            }
            Some(g) => {
                let gate_labels = super::scoring::dataset_labels(
                    &super::scoring::ready_dataset(
                        &state,
                        g.dataset_id,
                        "promotion_gate.dataset_id",
                    )
                    .await?,
                );
                if !spec.labels.iter().any(|l| gate_labels.contains(l)) {
                    return Err(ApiError::unprocessable(
                        "labels_mismatch",
                        format!(
                            "the run predicts {:?}; dataset {} is labelled {gate_labels:?}: the gate could compare nothing",
                            spec.labels, g.dataset_id
                        ),
                        Some("promotion_gate.dataset_id"),
                    ));
                }
                Some(crate::scoring::evaluation::GateSettings {
                    dataset_id: g.dataset_id,
                    split: super::scoring::split_name(
                        g.split.unwrap_or(super::datasets::SplitName::Test),
                    )
                    .to_string(),
                    margin: g.margin,
                })
            }
        };
        let id = Uuid::new_v4();
        let mut tx = state.pool.begin().await?;
        sqlx::query(
            "INSERT INTO training_runs (id, dataset_id, model_name, mode, task, labels, hyperparameters,
                                        device, auto_promote, webhook, total_epochs, promotion_gate,
                                        base_model)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(id)
        .bind(dataset.id)
        .bind(&body.model_name)
        .bind(serde_json::to_value(mode).ok().and_then(|v| v.as_str().map(str::to_string)))
        .bind(serde_json::to_value(spec.task_type).ok().and_then(|v| v.as_str().map(str::to_string)))
        .bind(serde_json::json!(spec.labels))
        .bind(serde_json::to_value(&hp).map_err(ApiError::internal)?)
        .bind(&device)
        .bind(body.auto_promote)
        .bind(webhook.map(|w| serde_json::to_value(w).unwrap_or_default()))
        .bind(hp.epochs as i32)
        .bind(gate.map(|g| serde_json::json!(g)))
        .bind(&base_model)
        .execute(&mut *tx)
        .await?;
        let ids = queue::enqueue(
            &mut tx,
            vec![NewJob {
                kind: JobKind::Train,
                args: TrainArgs { run_id: id },
                dataset_id: Some(dataset.id),
                scoring_job_id: None,
                progress_total: 0,
            }],
            state.settings.queue.max_attempts,
        )
        .await?;
        sqlx::query("UPDATE training_runs SET job_id = $2 WHERE id = $1")
            .bind(id)
            .bind(&ids[0])
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Created::Accepted(Json(fetch_run(&state, id).await?)))
    }

    /// Training runs, newest first.
    #[oai(path = "/training-runs", method = "get")]
    async fn list(
        &self,
        state: Data<&AppState>,
        /// Page size, 1 to 1,000 (`server.page_size_max` may lower it); default 50.
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
        /// Items to skip, >= 0; default 0.
        #[oai(validator(minimum(value = "0")))]
        offset: Query<Option<i64>>,
    ) -> Result<Json<TrainingRunPage>, ApiError> {
        let (limit, offset) = page_bounds(&state, limit.0, offset.0)?;
        let rows = sqlx::query(
            "SELECT r.*, (SELECT e.id FROM evaluations e WHERE e.run_id = r.id) AS gate_evaluation_id
             FROM training_runs r ORDER BY r.created_at DESC, r.id LIMIT $1 OFFSET $2",
        )
        .bind(limit)
        .bind(offset)
        .fetch_all(&state.pool)
        .await?;
        let total: i64 = sqlx::query_scalar("SELECT count(*) FROM training_runs")
            .fetch_one(&state.pool)
            .await?;
        Ok(Json(TrainingRunPage {
            items: rows.iter().map(row_to_run).collect(),
            total,
            limit,
            offset,
        }))
    }

    /// One run: status, progress (step and epoch of total, throughput, ETA), best epoch, test
    /// metrics.
    #[oai(path = "/training-runs/:id", method = "get")]
    async fn get(
        &self,
        state: Data<&AppState>,
        id: Path<Uuid>,
    ) -> Result<Json<TrainingRun>, ApiError> {
        Ok(Json(fetch_run(&state, id.0).await?))
    }

    /// The per-epoch series: train and validation loss, validation metrics.
    #[oai(path = "/training-runs/:id/metrics", method = "get")]
    async fn metrics(
        &self,
        state: Data<&AppState>,
        id: Path<Uuid>,
    ) -> Result<Json<MetricsSeries>, ApiError> {
        let run = fetch_run(&state, id.0).await?;
        let epochs = epoch_rows(&state, run.id).await?;
        Ok(Json(MetricsSeries {
            run_id: run.id,
            epochs,
            best_epoch: run.best_epoch,
            test_metrics: run.test_metrics,
        }))
    }

    /// Loss and F1 per epoch as an SVG image.
    #[oai(path = "/training-runs/:id/curves.svg", method = "get")]
    async fn curves(
        &self,
        state: Data<&AppState>,
        id: Path<Uuid>,
    ) -> Result<SvgResponse, ApiError> {
        let run = fetch_run(&state, id.0).await?;
        let points: Vec<EpochPoint> = epoch_rows(&state, run.id)
            .await?
            .iter()
            .map(|e| EpochPoint {
                epoch: e.epoch as u32,
                train_loss: e.train_loss,
                val_loss: e.val_loss,
                val_macro_f1: e.metrics.get("macro_f1").and_then(|v| v.as_f64()),
                val_micro_f1: e.metrics.get("micro_f1").and_then(|v| v.as_f64()),
            })
            .collect();
        let title = format!("{} ({}) — run {}", run.model_name, run.mode, run.id);
        let svg = render_curves(&title, &points, run.best_epoch.map(|e| e as u32))
            .map_err(ApiError::internal)?;
        Ok(SvgResponse::Svg(PlainText(svg)))
    }

    /// Stop a run: a queued one never starts, a running one stops at its next step.
    #[oai(path = "/training-runs/:id/cancel", method = "post")]
    async fn cancel(
        &self,
        state: Data<&AppState>,
        id: Path<Uuid>,
    ) -> Result<Json<TrainingRun>, ApiError> {
        let run = fetch_run(&state, id.0).await?;
        if matches!(run.status.as_str(), "succeeded" | "failed" | "cancelled") {
            return Err(ApiError::conflict(format!(
                "training run {} is {}: it cannot be cancelled",
                run.id, run.status
            )));
        }
        if let Some(job) = &run.job_id {
            match queue::cancel_job(&state.pool, job).await {
                Ok(_) | Err(queue::QueueError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // A queued run is cancelled now; a running one when its worker sees the flag.
        sqlx::query(
            "UPDATE training_runs SET status = 'cancelled', finished_at = now(), updated_at = now()
             WHERE id = $1 AND status = 'pending'",
        )
        .bind(run.id)
        .execute(&state.pool)
        .await?;
        Ok(Json(fetch_run(&state, run.id).await?))
    }
}

async fn epoch_rows(state: &AppState, run: Uuid) -> Result<Vec<EpochMetrics>, ApiError> {
    let rows = sqlx::query(
        "SELECT epoch, global_step, train_loss, val_loss, metrics, created_at
         FROM training_epochs WHERE run_id = $1 ORDER BY epoch",
    )
    .bind(run)
    .fetch_all(&state.pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| EpochMetrics {
            epoch: r.get("epoch"),
            global_step: r.get("global_step"),
            train_loss: r.get("train_loss"),
            val_loss: r.get("val_loss"),
            metrics: r.get("metrics"),
            created_at: r.get("created_at"),
        })
        .collect())
}
