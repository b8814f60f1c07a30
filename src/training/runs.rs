//! Training run rows in Postgres: create (row and `train` job in one transaction), read, list,
//! per-epoch series, cancel, and what cancelling or retrying a run's `train` job does to the run.
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use trainyard_jobs::{JobKind, TrainArgs};
use uuid::Uuid;

use crate::datasets::TaskType;
use crate::ml::classifier::TrainMode;
use crate::ml::trainer::Hyperparameters;
use crate::queue::{self, NewJob, QueueError};
use crate::scoring::evaluation::GateSettings;
use crate::training::webhook::WebhookConfig;
use crate::training::TrainingError;

crate::db::text_enum! {
    /// A training run's state (`training_runs.status`).
    pub enum RunStatus {
        Pending = "pending",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        Cancelled = "cancelled",
    }
}

impl RunStatus {
    /// Whether the run has ended (nothing more will happen to it).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled
        )
    }
}

/// One run as it is stored, with the id of the evaluation its promotion gate ran (if any).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Run {
    pub id: Uuid,
    pub dataset_id: Uuid,
    pub model_name: String,
    pub mode: String,
    pub task: String,
    pub labels: serde_json::Value,
    pub hyperparameters: serde_json::Value,
    pub base_model: Option<String>,
    pub device: String,
    pub device_used: Option<String>,
    pub auto_promote: bool,
    pub promotion_gate: Option<serde_json::Value>,
    pub gate_evaluation_id: Option<Uuid>,
    pub status: RunStatus,
    pub job_id: Option<String>,
    pub error: Option<String>,
    pub global_step: i64,
    pub total_steps: i64,
    pub epoch: i32,
    pub total_epochs: i32,
    pub samples_per_sec: Option<f64>,
    pub best_epoch: Option<i32>,
    pub best_metric: Option<f64>,
    pub validation_metrics: Option<serde_json::Value>,
    pub test_metrics: Option<serde_json::Value>,
    pub thresholds: Option<serde_json::Value>,
    pub telemetry: Option<serde_json::Value>,
    pub resumed_from: Option<i32>,
    pub model_version: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// One epoch of a run: losses and validation metrics.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Epoch {
    pub epoch: i32,
    pub global_step: i64,
    pub train_loss: f64,
    pub val_loss: Option<f64>,
    pub metrics: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// A run to start: what it trains on, how, and what it does when it ends.
pub struct NewRun<'a> {
    pub dataset_id: Uuid,
    pub model_name: &'a str,
    pub mode: TrainMode,
    pub task: TaskType,
    pub labels: &'a [String],
    pub hyperparameters: &'a Hyperparameters,
    pub device: &'a str,
    pub auto_promote: bool,
    pub webhook: Option<WebhookConfig>,
    pub promotion_gate: Option<GateSettings>,
    pub base_model: Option<&'a str>,
}

/// A serde enum's name as stored (`head`, `multi_label`, ...).
fn name_of<T: serde::Serialize>(value: T) -> Option<String> {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
}

/// Creates the run row and its `train` job in one transaction. Returns the run's id.
pub async fn create(
    pool: &PgPool,
    new: NewRun<'_>,
    max_attempts: i32,
) -> Result<Uuid, TrainingError> {
    let id = Uuid::new_v4();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO training_runs (id, dataset_id, model_name, mode, task, labels, hyperparameters,
                                    device, auto_promote, webhook, total_epochs, promotion_gate,
                                    base_model)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(id)
    .bind(new.dataset_id)
    .bind(new.model_name)
    .bind(name_of(new.mode))
    .bind(name_of(new.task))
    .bind(json!(new.labels))
    .bind(serde_json::to_value(new.hyperparameters).map_err(QueueError::from)?)
    .bind(new.device)
    .bind(new.auto_promote)
    .bind(new.webhook.map(|w| serde_json::to_value(w).unwrap_or_default()))
    .bind(new.hyperparameters.epochs as i32)
    .bind(new.promotion_gate.map(|g| json!(g)))
    .bind(new.base_model)
    .execute(&mut *tx)
    .await?;
    let ids = queue::enqueue(
        &mut tx,
        vec![NewJob {
            kind: JobKind::Train,
            args: TrainArgs { run_id: id },
            dataset_id: Some(new.dataset_id),
            scoring_job_id: None,
            progress_total: 0,
        }],
        max_attempts,
    )
    .await?;
    sqlx::query("UPDATE training_runs SET job_id = $2 WHERE id = $1")
        .bind(id)
        .bind(&ids[0])
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(id)
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<Run>, TrainingError> {
    Ok(sqlx::query_as(
        "SELECT r.*, (SELECT e.id FROM evaluations e WHERE e.run_id = r.id) AS gate_evaluation_id
         FROM training_runs r WHERE r.id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// Runs, newest first, and how many there are.
pub async fn list(
    pool: &PgPool,
    limit: i64,
    offset: i64,
) -> Result<(Vec<Run>, i64), TrainingError> {
    let rows = sqlx::query_as(
        "SELECT r.*, (SELECT e.id FROM evaluations e WHERE e.run_id = r.id) AS gate_evaluation_id
         FROM training_runs r ORDER BY r.created_at DESC, r.id LIMIT $1 OFFSET $2",
    )
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM training_runs")
        .fetch_one(pool)
        .await?;
    Ok((rows, total))
}

/// A run's epochs in order.
pub async fn epochs(pool: &PgPool, run_id: Uuid) -> Result<Vec<Epoch>, TrainingError> {
    Ok(sqlx::query_as(
        "SELECT epoch, global_step, train_loss, val_loss, metrics, created_at
         FROM training_epochs WHERE run_id = $1 ORDER BY epoch",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await?)
}

/// Cancels a run that has not started; a running one is cancelled by its worker when it sees
/// its job's cancel flag.
pub async fn cancel_pending(pool: &PgPool, run_id: Uuid) -> Result<(), TrainingError> {
    sqlx::query(
        "UPDATE training_runs SET status = 'cancelled', finished_at = now(), updated_at = now()
         WHERE id = $1 AND status = 'pending'",
    )
    .bind(run_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Stops a run: a queued one never starts (cancelled now), a running one stops at its next
/// step (its worker sees the job's cancel flag). Returns the run as it is now.
pub async fn cancel(pool: &PgPool, id: Uuid) -> Result<Run, TrainingError> {
    let run = get(pool, id).await?.ok_or(TrainingError::NotFound(id))?;
    if run.status.is_final() {
        return Err(TrainingError::Conflict(format!(
            "training run {} is {}: it cannot be cancelled",
            run.id, run.status
        )));
    }
    if let Some(job) = &run.job_id {
        match queue::cancel_job(pool, job).await {
            Ok(_) | Err(QueueError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    cancel_pending(pool, run.id).await?;
    get(pool, id).await?.ok_or(TrainingError::NotFound(id))
}

/// A run's `train` job was cancelled: a run that has not started is cancelled now.
pub async fn job_cancelled(pool: &PgPool, job_id: &str) -> Result<(), TrainingError> {
    sqlx::query(
        "UPDATE training_runs SET status = 'cancelled', finished_at = now(), updated_at = now()
         WHERE job_id = $1 AND status = 'pending'",
    )
    .bind(job_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// A run's failed or cancelled `train` job goes back in its queue (in the caller's
/// transaction): the run is pending again and resumes from its last checkpoint.
pub async fn job_retrying(conn: &mut PgConnection, job_id: &str) -> Result<(), TrainingError> {
    sqlx::query(
        "UPDATE training_runs SET status = 'pending', error = NULL, finished_at = NULL,
                updated_at = now()
         WHERE job_id = $1 AND status IN ('failed', 'cancelled')",
    )
    .bind(job_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
