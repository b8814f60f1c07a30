//! `/api/v1/training-runs`: start a run, follow it, read its metrics and curves, cancel it.
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::{Json, PlainText};
use poem_openapi::{OpenApi, Tags};
use uuid::Uuid;

use super::errors::ApiError;
use super::training_schema::*;
use super::{page_bounds, AppState};
use crate::ml::classifier::TrainMode;
use crate::training::curves::{render_curves, EpochPoint};
use crate::training::runs::RunStatus;
use crate::training::runs::{self, NewRun, Run};
use crate::training::webhook::WebhookConfig;

#[derive(Tags)]
enum ApiTags {
    /// Training runs: head (MLP on stored embeddings) or finetune (MiniLM end to end).
    Training,
}

fn row_to_run(r: Run) -> TrainingRun {
    let step = r.global_step;
    let total = r.total_steps;
    let sps = r.samples_per_sec;
    let hp = r.hyperparameters;
    let batch = hp.get("batch_size").and_then(|b| b.as_f64()).unwrap_or(1.0);
    let status = r.status;
    let eta = match (status, sps) {
        (RunStatus::Running, Some(s)) if s > 0.0 => Some((total - step).max(0) as f64 * batch / s),
        _ => None,
    };
    TrainingRun {
        id: r.id,
        dataset_id: r.dataset_id,
        model_name: r.model_name,
        mode: r.mode,
        task: r.task,
        labels: serde_json::from_value(r.labels).unwrap_or_default(),
        hyperparameters: hp,
        base_model: r.base_model,
        device: r.device,
        device_used: r.device_used,
        auto_promote: r.auto_promote,
        promotion_gate: r.promotion_gate,
        gate_evaluation_id: r.gate_evaluation_id,
        status: status.to_string(),
        job_id: r.job_id,
        error: r
            .error
            .map(|e| e.trim_start_matches("AbortError: ").to_string()),
        progress: RunProgress {
            global_step: step,
            total_steps: total,
            epoch: r.epoch,
            total_epochs: r.total_epochs,
            samples_per_sec: sps,
            eta_secs: eta,
        },
        best_epoch: r.best_epoch,
        best_metric: r.best_metric,
        validation_metrics: r.validation_metrics,
        test_metrics: r.test_metrics,
        thresholds: r.thresholds,
        telemetry: r.telemetry,
        resumed_from: r.resumed_from,
        model_version: r.model_version,
        created_at: r.created_at,
        started_at: r.started_at,
        finished_at: r.finished_at,
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
    let is_local = |key: &str| models.get(key).is_some_and(|m| m.is_local());
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
                    .min_by_key(|(_, m)| m.local().is_some_and(|l| l.dir.is_some()))
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
    let run = runs::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found("training run", id))?;
    Ok(row_to_run(run))
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
        if dataset.status != crate::datasets::store::DatasetStatus::Ready {
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
        let id = runs::create(
            &state.pool,
            NewRun {
                dataset_id: dataset.id,
                model_name: &body.model_name,
                mode,
                task: spec.task_type,
                labels: &spec.labels,
                hyperparameters: &hp,
                device: &device,
                auto_promote: body.auto_promote,
                webhook,
                promotion_gate: gate,
                base_model: base_model.as_deref(),
            },
            state.settings.queue.max_attempts,
        )
        .await?;
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
        let (rows, total) = runs::list(&state.pool, limit, offset).await?;
        Ok(Json(TrainingRunPage {
            items: rows.into_iter().map(row_to_run).collect(),
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
        Ok(Json(row_to_run(runs::cancel(&state.pool, id.0).await?)))
    }
}

async fn epoch_rows(state: &AppState, run: Uuid) -> Result<Vec<EpochMetrics>, ApiError> {
    Ok(runs::epochs(&state.pool, run)
        .await?
        .into_iter()
        .map(|e| EpochMetrics {
            epoch: e.epoch,
            global_step: e.global_step,
            train_loss: e.train_loss,
            val_loss: e.val_loss,
            metrics: e.metrics,
            created_at: e.created_at,
        })
        .collect())
}
