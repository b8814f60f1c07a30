//! The schemas of `/api/v1/training-runs` (requests and responses) and the checks that turn a
//! request's hyperparameters into the trainer's, defaults filled and every range enforced.
use chrono::{DateTime, Utc};
use poem_openapi::payload::{Json, PlainText};
use poem_openapi::{ApiResponse, Enum, Object};
use uuid::Uuid;

use super::errors::ApiError;
use crate::datasets::TaskType;
use crate::ml::classifier::{LossKind, TrainMode};
use crate::ml::precision::Precision;
use crate::ml::trainer::{EarlyStoppingMetric, Hyperparameters};

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

/// Number type of a run's forward passes.
#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "snake_case")]
pub enum PrecisionIn {
    Fp32,
    Bf16,
    Fp16,
}

/// Where a run trains: `auto` (CUDA when the worker that takes it has it), `cpu` or `cuda`.
#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "snake_case")]
pub enum DeviceIn {
    Auto,
    Cpu,
    Cuda,
}

impl DeviceIn {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceIn::Auto => "auto",
            DeviceIn::Cpu => "cpu",
            DeviceIn::Cuda => "cuda",
        }
    }
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
    #[oai(nullable, validator(minimum(value = "1"), maximum(value = "1000")))]
    pub epochs: Option<u32>,
    /// 1–4096. Default: head 64, finetune 16.
    #[oai(nullable, validator(minimum(value = "1"), maximum(value = "4096")))]
    pub batch_size: Option<usize>,
    /// Learning rate of the classifier head, (0, 1]. Default 1e-3.
    #[oai(
        nullable,
        validator(minimum(value = "0", exclusive), maximum(value = "1"))
    )]
    pub learning_rate: Option<f64>,
    /// Learning rate of the encoder (finetune), (0, 1]. Default 2e-5.
    #[oai(
        nullable,
        validator(minimum(value = "0", exclusive), maximum(value = "1"))
    )]
    pub encoder_learning_rate: Option<f64>,
    /// AdamW decoupled weight decay, [0, 1]. Default 0.01.
    #[oai(nullable, validator(minimum(value = "0"), maximum(value = "1")))]
    pub weight_decay: Option<f64>,
    /// Share of all steps spent warming up, [0, 1). Default 0.1; then linear decay to 0.
    #[oai(nullable, validator(minimum(value = "0"), maximum(value = "0.99")))]
    pub warmup_ratio: Option<f64>,
    /// Global gradient-norm clip, >= 0 (0 = off). Default 1.0.
    #[oai(nullable, validator(minimum(value = "0"), maximum(value = "1000000")))]
    pub max_grad_norm: Option<f64>,
    /// Default val_macro_f1. Without a validation split, early stopping follows the training
    /// loss whatever this says.
    #[oai(nullable)]
    pub early_stopping_metric: Option<EarlyStoppingIn>,
    /// Epochs without improvement before stopping, 0–100 (0 = never). Default 3.
    #[oai(nullable, validator(minimum(value = "0"), maximum(value = "100")))]
    pub patience: Option<u32>,
    /// 0 to 4294967295. Default 42.
    #[oai(
        nullable,
        validator(minimum(value = "0"), maximum(value = "4294967295"))
    )]
    pub seed: Option<u64>,
    /// bce (with pos_weight), focal or asymmetric (not for multi_class). Default bce.
    #[oai(nullable)]
    pub loss: Option<LossIn>,
    /// BCE only: weight positives by negatives/positives per label. Default true.
    #[oai(nullable)]
    pub pos_weight: Option<bool>,
    /// Focal loss gamma, [0, 10]. Default 2.
    #[oai(nullable, validator(minimum(value = "0"), maximum(value = "10")))]
    pub focal_gamma: Option<f64>,
    /// Asymmetric loss: gamma for negatives [0, 10] (default 4), positives [0, 10] (default 1),
    /// probability shift for negatives [0, 0.5) (default 0.05).
    #[oai(nullable, validator(minimum(value = "0"), maximum(value = "10")))]
    pub asymmetric_gamma_neg: Option<f64>,
    #[oai(nullable, validator(minimum(value = "0"), maximum(value = "10")))]
    pub asymmetric_gamma_pos: Option<f64>,
    #[oai(nullable, validator(minimum(value = "0"), maximum(value = "0.49")))]
    pub asymmetric_clip: Option<f64>,
    /// Hidden width of the head, 0–4096 (0 = linear). Default 256.
    #[oai(nullable, validator(minimum(value = "0"), maximum(value = "4096")))]
    pub hidden_size: Option<i64>,
    /// Head dropout, [0, 0.9]. Default 0.1.
    #[oai(nullable, validator(minimum(value = "0"), maximum(value = "0.9")))]
    pub dropout: Option<f64>,
    /// Finetune: tokens per text, 8–8192 and at most the base model's longest input (512 for
    /// BERT-shaped families). Default 128.
    #[oai(nullable, validator(minimum(value = "8"), maximum(value = "8192")))]
    pub max_tokens: Option<usize>,
    /// Batches whose gradients add up before each optimizer step, 1–1024 (effective batch:
    /// `batch_size ×` this). Default 1.
    #[oai(nullable, validator(minimum(value = "1"), maximum(value = "1024")))]
    pub gradient_accumulation_steps: Option<u32>,
    /// Finetune: most padded tokens in one forward pass, 64–1048576. A batch is run as
    /// micro-batches under it (a text longer than the budget runs alone); the update is the
    /// same. Default 4096.
    #[oai(nullable, validator(minimum(value = "64"), maximum(value = "1048576")))]
    pub max_batch_tokens: Option<usize>,
    /// Finetune: layer-wise learning-rate decay, (0, 1]. Each encoder layer below the top
    /// learns at this factor of the one above (embeddings at factor^layers); the head at
    /// `learning_rate`. Default 1 (off).
    #[oai(
        nullable,
        validator(minimum(value = "0", exclusive), maximum(value = "1"))
    )]
    pub layer_lr_decay: Option<f64>,
    /// Number type of the forward passes: fp32 (default), bf16 or fp16 (autocast as in
    /// PyTorch: matmuls and attention in the half type, norms, softmax and the loss in fp32,
    /// weights and optimizer state in fp32; fp16 with dynamic loss scaling). Meant for CUDA
    /// workers; on a CPU it runs, usually slower than fp32 unless the CPU has bf16 units.
    #[oai(nullable)]
    pub precision: Option<PrecisionIn>,
    /// Telemetry step events every N steps, >= 1. Default 10.
    #[oai(nullable, validator(minimum(value = "1"), maximum(value = "1000000")))]
    pub log_every_steps: Option<u64>,
}

#[derive(Debug, Object)]
pub struct WebhookIn {
    /// Receives `{experiment_id, global_step, epoch, metrics, timestamp}` per logging step and
    /// the same with `is_eval: true` after each evaluation.
    pub url: String,
    /// Sent verbatim as the `Authorization` header.
    #[oai(nullable)]
    pub authorization: Option<String>,
}

#[derive(Debug, Object)]
pub struct CreateTrainingRun {
    /// A ready dataset.
    pub dataset_id: Uuid,
    /// The registry name the trained version is stored under: 1–64 of `A-Za-z0-9._-`.
    #[oai(validator(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._-]{1,64}$"))]
    pub model_name: String,
    /// Default head.
    #[oai(nullable)]
    pub mode: Option<ModeIn>,
    #[oai(nullable)]
    pub hyperparameters: Option<HyperparametersIn>,
    /// Default auto.
    #[oai(nullable)]
    pub device: Option<DeviceIn>,
    /// Promote the new version when its validation macro-F1 beats the served one's (or, with
    /// `promotion_gate`, when it wins that evaluation). Promotion is an `admin` action: with
    /// this (or `promotion_gate`) the token needs scope `admin` (403 otherwise).
    #[oai(default)]
    pub auto_promote: bool,
    /// With `auto_promote`: instead of comparing validation figures, evaluate the new version
    /// and the served one on a dataset split and promote only when the new one's macro-F1 (at
    /// stored thresholds) beats the served one's by at least `margin`.
    #[oai(nullable)]
    pub promotion_gate: Option<PromotionGateIn>,
    /// Finetune only: the local embedding model (a BERT-family checkpoint folder declared in
    /// embedding_models.toml with `type = "local"`) whose encoder the run starts from.
    /// Default: the dataset's embedding model when it is local, else
    /// `datasets.default_embedding_model`.
    #[oai(validator(min_length = 1, max_length = 200))]
    pub base_model: Option<String>,
    /// Telemetry webhook; default from config (`training.webhook_url`).
    #[oai(nullable)]
    pub webhook: Option<WebhookIn>,
}

/// The evaluation a gated `auto_promote` must win.
#[derive(Debug, Object)]
pub struct PromotionGateIn {
    /// A ready dataset labelled with the run's labels (usually one the run did not train on).
    pub dataset_id: Uuid,
    /// Default `test`.
    #[oai(nullable)]
    pub split: Option<super::datasets::SplitName>,
    /// Macro-F1 points (0 to 1) the new version must gain; default 0 (any gain).
    #[oai(default, validator(minimum(value = "0"), maximum(value = "1")))]
    pub margin: f64,
}

#[derive(Debug, Object)]
pub struct RunProgress {
    pub global_step: i64,
    pub total_steps: i64,
    pub epoch: i32,
    pub total_epochs: i32,
    #[oai(nullable)]
    pub samples_per_sec: Option<f64>,
    /// Seconds left at the current throughput.
    #[oai(nullable)]
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
    /// Finetune: the local embedding model the encoder started from (absent for heads and for
    /// runs from before base models could be chosen).
    #[oai(skip_serializing_if_is_none)]
    pub base_model: Option<String>,
    pub device: String,
    #[oai(nullable)]
    pub device_used: Option<String>,
    pub auto_promote: bool,
    /// `{dataset_id, split, margin}` when `auto_promote` must win an evaluation.
    #[oai(nullable)]
    pub promotion_gate: Option<serde_json::Value>,
    /// The evaluation the gate asked for once the version was registered (its `promotion`
    /// says what was decided).
    #[oai(nullable)]
    pub gate_evaluation_id: Option<Uuid>,
    /// pending | running | succeeded | failed | cancelled
    pub status: String,
    #[oai(nullable)]
    pub job_id: Option<String>,
    #[oai(nullable)]
    pub error: Option<String>,
    pub progress: RunProgress,
    #[oai(nullable)]
    pub best_epoch: Option<i32>,
    /// The early-stopping metric's best value (val_loss is negated; with no validation split,
    /// the negated training loss).
    #[oai(nullable)]
    pub best_metric: Option<f64>,
    /// Validation-split metrics at the best epoch with the tuned thresholds, once the run has
    /// succeeded; `{"validation_split": "empty", "rows": 0}` when the validation split had no
    /// annotated record (no validation figures; early stopping on the training loss; every
    /// threshold 0.5).
    #[oai(nullable)]
    pub validation_metrics: Option<serde_json::Value>,
    /// Test-split metrics at the best epoch with the tuned thresholds; `{"test_split": "empty",
    /// "rows": 0}` when the test split had no annotated record.
    #[oai(nullable)]
    pub test_metrics: Option<serde_json::Value>,
    /// Per-label thresholds tuned on validation (best F1; positive when score >= threshold);
    /// 0.5 for every label when there was no validation split.
    #[oai(nullable)]
    pub thresholds: Option<serde_json::Value>,
    /// Webhook delivery counts: sent, failed, dropped.
    #[oai(nullable)]
    pub telemetry: Option<serde_json::Value>,
    /// The epoch a resumed run continued after, when it resumed.
    #[oai(nullable)]
    pub resumed_from: Option<i32>,
    #[oai(nullable)]
    pub model_version: Option<i32>,
    pub created_at: DateTime<Utc>,
    #[oai(nullable)]
    pub started_at: Option<DateTime<Utc>>,
    #[oai(nullable)]
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
    #[oai(nullable)]
    pub val_loss: Option<f64>,
    /// Validation metrics: per label precision/recall/F1/ROC-AUC, macro and micro; or
    /// `{"validation_split": "empty", "rows": 0}` when the run has no validation split.
    pub metrics: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Object)]
pub struct MetricsSeries {
    pub run_id: Uuid,
    pub epochs: Vec<EpochMetrics>,
    #[oai(nullable)]
    pub best_epoch: Option<i32>,
    #[oai(nullable)]
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

pub(super) fn in_range<T: PartialOrd + std::fmt::Display>(
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
    if let Some(v) = in_range(g.max_tokens, 8, 8192, "max_tokens")? {
        hp.max_tokens = v;
    }
    if let Some(v) = in_range(
        g.gradient_accumulation_steps,
        1,
        1024,
        "gradient_accumulation_steps",
    )? {
        hp.gradient_accumulation_steps = v;
    }
    if let Some(v) = in_range(g.max_batch_tokens, 64, 1 << 20, "max_batch_tokens")? {
        hp.max_batch_tokens = v;
    }
    if let Some(v) = positive(g.layer_lr_decay, "layer_lr_decay")? {
        hp.layer_lr_decay = v;
    }
    if let Some(v) = g.precision {
        hp.precision = match v {
            PrecisionIn::Fp32 => Precision::Fp32,
            PrecisionIn::Bf16 => Precision::Bf16,
            PrecisionIn::Fp16 => Precision::Fp16,
        };
    }
    if let Some(v) = in_range(g.log_every_steps, 1, 1_000_000, "log_every_steps")? {
        hp.log_every_steps = v;
    }
    Ok(hp)
}

pub(super) fn valid_model_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}
