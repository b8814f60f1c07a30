//! `/api/v1/training-runs`: start a run, follow it, read its metrics and curves, cancel it.
use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::{Json, PlainText};
use poem_openapi::{ApiResponse, Enum, Object, OpenApi, Tags};
use sqlx::Row;
use trainyard_jobs::{JobKind, TrainArgs};
use uuid::Uuid;

use super::errors::ApiError;
use super::{page_bounds, AppState};
use crate::datasets::TaskType;
use crate::ml::classifier::{LossKind, TrainMode};
use crate::ml::trainer::{EarlyStoppingMetric, Hyperparameters};
use crate::queue::{self, NewJob};
use crate::training::curves::{render_curves, EpochPoint};
use crate::training::webhook::WebhookConfig;

#[derive(Tags)]
enum ApiTags {
    /// Training runs: head (MLP on stored embeddings) or finetune (MiniLM end to end).
    Training,
}

#[derive(Debug, Clone, Copy, Enum, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum ModeIn {
    Head,
    Finetune,
}

#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "snake_case")]
pub enum LossIn {
    Bce,
    Focal,
    Asymmetric,
}

#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "snake_case")]
pub enum EarlyStoppingIn {
    ValMacroF1,
    ValMicroF1,
    ValLoss,
}

/// Every field is optional; the defaults depend on the mode (see each field).
#[derive(Debug, Object, Default)]
pub struct HyperparametersIn {
    /// 1–1000. Default: head 30, finetune 3.
    pub epochs: Option<u32>,
    /// 1–4096. Default: head 64, finetune 16.
    pub batch_size: Option<usize>,
    /// Learning rate of the classifier head, (0, 1]. Default 1e-3.
    pub learning_rate: Option<f64>,
    /// Learning rate of the encoder (finetune), (0, 1]. Default 2e-5.
    pub encoder_learning_rate: Option<f64>,
    /// AdamW decoupled weight decay, [0, 1]. Default 0.01.
    pub weight_decay: Option<f64>,
    /// Share of all steps spent warming up, [0, 1). Default 0.1; then linear decay to 0.
    pub warmup_ratio: Option<f64>,
    /// Global gradient-norm clip, >= 0 (0 = off). Default 1.0.
    pub max_grad_norm: Option<f64>,
    /// Default val_macro_f1.
    pub early_stopping_metric: Option<EarlyStoppingIn>,
    /// Epochs without improvement before stopping, 0–100 (0 = never). Default 3.
    pub patience: Option<u32>,
    /// Default 42.
    pub seed: Option<u64>,
    /// bce (with pos_weight), focal or asymmetric (not for multi_class). Default bce.
    pub loss: Option<LossIn>,
    /// BCE only: weight positives by negatives/positives per label. Default true.
    pub pos_weight: Option<bool>,
    /// Focal loss gamma, [0, 10]. Default 2.
    pub focal_gamma: Option<f64>,
    /// Asymmetric loss: gamma for negatives [0, 10] (default 4), positives [0, 10] (default 1),
    /// probability shift for negatives [0, 0.5) (default 0.05).
    pub asymmetric_gamma_neg: Option<f64>,
    pub asymmetric_gamma_pos: Option<f64>,
    pub asymmetric_clip: Option<f64>,
    /// Hidden width of the head, 0–4096 (0 = linear). Default 256.
    pub hidden_size: Option<i64>,
    /// Head dropout, [0, 0.9]. Default 0.1.
    pub dropout: Option<f64>,
    /// Finetune: tokens per text, 8–512. Default 128.
    pub max_tokens: Option<usize>,
    /// Telemetry step events every N steps, >= 1. Default 10.
    pub log_every_steps: Option<u64>,
}

#[derive(Debug, Object)]
pub struct WebhookIn {
    /// Receives `{experiment_id, global_step, epoch, metrics, timestamp}` per logging step and
    /// the same with `is_eval: true` after each evaluation.
    pub url: String,
    /// Sent verbatim as the `Authorization` header.
    pub authorization: Option<String>,
}

#[derive(Debug, Object)]
pub struct CreateTrainingRun {
    /// A ready dataset.
    pub dataset_id: Uuid,
    /// The registry name the trained version is stored under: 1–64 of `A-Za-z0-9._-`.
    pub model_name: String,
    /// Default head.
    pub mode: Option<ModeIn>,
    pub hyperparameters: Option<HyperparametersIn>,
    /// auto | cpu | cuda. Default auto (CUDA when the worker has it).
    pub device: Option<String>,
    /// Promote the new version when its validation macro-F1 beats the served one's.
    #[oai(default)]
    pub auto_promote: bool,
    /// Telemetry webhook; default from config (`training.webhook_url`).
    pub webhook: Option<WebhookIn>,
}

#[derive(Debug, Object)]
pub struct RunProgress {
    pub global_step: i64,
    pub total_steps: i64,
    pub epoch: i32,
    pub total_epochs: i32,
    pub samples_per_sec: Option<f64>,
    /// Seconds left at the current throughput.
    pub eta_secs: Option<f64>,
}

#[derive(Debug, Object)]
pub struct TrainingRun {
    pub id: Uuid,
    pub dataset_id: Uuid,
    pub model_name: String,
    /// head | finetune
    pub mode: String,
    /// binary | multi_class | multi_label
    pub task: String,
    pub labels: Vec<String>,
    /// The hyperparameters in effect, defaults filled in.
    pub hyperparameters: serde_json::Value,
    pub device: String,
    pub device_used: Option<String>,
    pub auto_promote: bool,
    /// pending | running | succeeded | failed | cancelled
    pub status: String,
    pub job_id: Option<String>,
    pub error: Option<String>,
    pub progress: RunProgress,
    pub best_epoch: Option<i32>,
    /// The early-stopping metric's best value (val_loss is negated).
    pub best_metric: Option<f64>,
    /// Test-split metrics at the best epoch with the tuned thresholds.
    pub test_metrics: Option<serde_json::Value>,
    /// Per-label thresholds tuned on validation (best F1; positive when score >= threshold).
    pub thresholds: Option<serde_json::Value>,
    /// Webhook delivery counts: sent, failed, dropped.
    pub telemetry: Option<serde_json::Value>,
    /// The epoch a resumed run continued after, when it resumed.
    pub resumed_from: Option<i32>,
    pub model_version: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Object)]
pub struct TrainingRunPage {
    pub items: Vec<TrainingRun>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

#[derive(Debug, Object)]
pub struct EpochMetrics {
    pub epoch: i32,
    pub global_step: i64,
    pub train_loss: f64,
    pub val_loss: Option<f64>,
    /// Validation metrics: per label precision/recall/F1/ROC-AUC, macro and micro.
    pub metrics: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Object)]
pub struct MetricsSeries {
    pub run_id: Uuid,
    pub epochs: Vec<EpochMetrics>,
    pub best_epoch: Option<i32>,
    pub test_metrics: Option<serde_json::Value>,
}

#[derive(ApiResponse)]
pub enum SvgResponse {
    /// Loss and F1 per epoch.
    #[oai(status = 200, content_type = "image/svg+xml")]
    Svg(PlainText<String>),
}

#[derive(ApiResponse)]
pub enum Created {
    /// The run is queued.
    #[oai(status = 202)]
    Accepted(Json<TrainingRun>),
}

fn in_range<T: PartialOrd + std::fmt::Display>(
    value: Option<T>,
    lo: T,
    hi: T,
    name: &str,
) -> Result<Option<T>, ApiError> {
    match value {
        Some(v) if !(v >= lo && v <= hi) => Err(ApiError::unprocessable(
            "invalid_hyperparameter",
            format!("hyperparameters.{name} must be between {lo} and {hi}, got {v}"),
            Some(name),
        )),
        other => Ok(other),
    }
}

/// Fills defaults and checks every range.
pub fn resolve_hyperparameters(
    mode: TrainMode,
    task: TaskType,
    given: Option<HyperparametersIn>,
) -> Result<Hyperparameters, ApiError> {
    let g = given.unwrap_or_default();
    let mut hp = Hyperparameters::defaults_for(mode);
    let positive = |v: Option<f64>, name: &str| -> Result<Option<f64>, ApiError> {
        match v {
            Some(x) if !(x > 0.0 && x <= 1.0) => Err(ApiError::unprocessable(
                "invalid_hyperparameter",
                format!("hyperparameters.{name} must be in (0, 1], got {x}"),
                Some(name),
            )),
            other => Ok(other),
        }
    };
    if let Some(v) = in_range(g.epochs, 1, 1000, "epochs")? {
        hp.epochs = v;
    }
    if let Some(v) = in_range(g.batch_size, 1, 4096, "batch_size")? {
        hp.batch_size = v;
    }
    if let Some(v) = positive(g.learning_rate, "learning_rate")? {
        hp.learning_rate = v;
    }
    if let Some(v) = positive(g.encoder_learning_rate, "encoder_learning_rate")? {
        hp.encoder_learning_rate = v;
    }
    if let Some(v) = in_range(g.weight_decay, 0.0, 1.0, "weight_decay")? {
        hp.weight_decay = v;
    }
    if let Some(v) = in_range(g.warmup_ratio, 0.0, 0.99, "warmup_ratio")? {
        hp.warmup_ratio = v;
    }
    if let Some(v) = in_range(g.max_grad_norm, 0.0, 1e6, "max_grad_norm")? {
        hp.max_grad_norm = v;
    }
    if let Some(v) = g.early_stopping_metric {
        hp.early_stopping_metric = match v {
            EarlyStoppingIn::ValMacroF1 => EarlyStoppingMetric::ValMacroF1,
            EarlyStoppingIn::ValMicroF1 => EarlyStoppingMetric::ValMicroF1,
            EarlyStoppingIn::ValLoss => EarlyStoppingMetric::ValLoss,
        };
    }
    if let Some(v) = in_range(g.patience, 0, 100, "patience")? {
        hp.patience = v;
    }
    if let Some(v) = g.seed {
        hp.seed = v;
    }
    if let Some(v) = g.loss {
        hp.loss = match v {
            LossIn::Bce => LossKind::Bce,
            LossIn::Focal => LossKind::Focal,
            LossIn::Asymmetric => LossKind::Asymmetric,
        };
    }
    if hp.loss == LossKind::Asymmetric && task == TaskType::MultiClass {
        return Err(ApiError::unprocessable(
            "invalid_hyperparameter",
            "the asymmetric loss is for binary and multi-label tasks; use bce or focal for multi_class",
            Some("loss"),
        ));
    }
    if let Some(v) = g.pos_weight {
        hp.pos_weight = v;
    }
    if let Some(v) = in_range(g.focal_gamma, 0.0, 10.0, "focal_gamma")? {
        hp.focal_gamma = v;
    }
    if let Some(v) = in_range(g.asymmetric_gamma_neg, 0.0, 10.0, "asymmetric_gamma_neg")? {
        hp.asymmetric_gamma_neg = v;
    }
    if let Some(v) = in_range(g.asymmetric_gamma_pos, 0.0, 10.0, "asymmetric_gamma_pos")? {
        hp.asymmetric_gamma_pos = v;
    }
    if let Some(v) = in_range(g.asymmetric_clip, 0.0, 0.49, "asymmetric_clip")? {
        hp.asymmetric_clip = v;
    }
    if let Some(v) = in_range(g.hidden_size, 0, 4096, "hidden_size")? {
        hp.hidden_size = v;
    }
    if let Some(v) = in_range(g.dropout, 0.0, 0.9, "dropout")? {
        hp.dropout = v;
    }
    if let Some(v) = in_range(g.max_tokens, 8, 512, "max_tokens")? {
        hp.max_tokens = v;
    }
    if let Some(v) = in_range(g.log_every_steps, 1, 1_000_000, "log_every_steps")? {
        hp.log_every_steps = v;
    }
    Ok(hp)
}

fn valid_model_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
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
        device: r.get("device"),
        device_used: r.get("device_used"),
        auto_promote: r.get("auto_promote"),
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

async fn fetch_run(state: &AppState, id: Uuid) -> Result<TrainingRun, ApiError> {
    let row = sqlx::query("SELECT * FROM training_runs WHERE id = $1")
        .bind(id)
        .fetch_optional(&state.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("training run", id))?;
    Ok(row_to_run(&row))
}

fn parse_run_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| {
        ApiError::bad_request(
            format!("`{id}` is not a training run id (a UUID)"),
            Some("id"),
        )
    })
}

pub struct TrainingApi;

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Training")]
impl TrainingApi {
    /// Start a training run on a ready dataset: enqueues a `train` job.
    #[oai(path = "/training-runs", method = "post")]
    async fn create(
        &self,
        state: Data<&AppState>,
        body: Json<CreateTrainingRun>,
    ) -> Result<Created, ApiError> {
        let body = body.0;
        if !valid_model_name(&body.model_name) {
            return Err(ApiError::unprocessable(
                "invalid_model_name",
                "model_name must be 1-64 characters of A-Z, a-z, 0-9, '.', '_' or '-'",
                Some("model_name"),
            ));
        }
        let device = body.device.unwrap_or_else(|| "auto".into());
        if !matches!(device.as_str(), "auto" | "cpu" | "cuda") {
            return Err(ApiError::unprocessable(
                "invalid_device",
                format!("device must be auto, cpu or cuda, got `{device}`"),
                Some("device"),
            ));
        }
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
        if mode == TrainMode::Finetune && state.settings.local_model.dir.is_empty() {
            return Err(ApiError::unprocessable(
                "no_local_model",
                "finetune needs the local model (local_model.dir is not set)",
                Some("mode"),
            ));
        }
        let webhook = match body.webhook {
            Some(w) => {
                let parsed = reqwest::Url::parse(&w.url)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https"));
                if parsed.is_none() {
                    return Err(ApiError::unprocessable(
                        "invalid_webhook",
                        format!("webhook.url `{}` is not an http(s) URL", w.url),
                        Some("webhook.url"),
                    ));
                }
                Some(WebhookConfig::new(w.url, w.authorization))
            }
            None => None,
        };
        let id = Uuid::new_v4();
        let mut tx = state.pool.begin().await?;
        sqlx::query(
            "INSERT INTO training_runs (id, dataset_id, model_name, mode, task, labels, hyperparameters,
                                        device, auto_promote, webhook, total_epochs)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
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
        .execute(&mut *tx)
        .await?;
        let ids = queue::enqueue(
            &mut tx,
            vec![NewJob {
                kind: JobKind::Train,
                args: TrainArgs { run_id: id },
                dataset_id: Some(dataset.id),
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
        limit: Query<Option<i64>>,
        offset: Query<Option<i64>>,
    ) -> Result<Json<TrainingRunPage>, ApiError> {
        let (limit, offset) = page_bounds(&state, limit.0, offset.0)?;
        let rows = sqlx::query(
            "SELECT * FROM training_runs ORDER BY created_at DESC, id LIMIT $1 OFFSET $2",
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
        id: Path<String>,
    ) -> Result<Json<TrainingRun>, ApiError> {
        Ok(Json(fetch_run(&state, parse_run_id(&id)?).await?))
    }

    /// The per-epoch series: train and validation loss, validation metrics.
    #[oai(path = "/training-runs/:id/metrics", method = "get")]
    async fn metrics(
        &self,
        state: Data<&AppState>,
        id: Path<String>,
    ) -> Result<Json<MetricsSeries>, ApiError> {
        let run = fetch_run(&state, parse_run_id(&id)?).await?;
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
        id: Path<String>,
    ) -> Result<SvgResponse, ApiError> {
        let run = fetch_run(&state, parse_run_id(&id)?).await?;
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
        id: Path<String>,
    ) -> Result<Json<TrainingRun>, ApiError> {
        let run = fetch_run(&state, parse_run_id(&id)?).await?;
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
