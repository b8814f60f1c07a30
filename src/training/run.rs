//! The `train` job: loads a run's dataset from Postgres, trains epoch by epoch (checkpointing
//! each completed epoch), tunes per-label thresholds on validation, scores the test split and
//! registers the model version, all idempotently.
//!
//! Resume: the checkpoint row holds the last completed epoch's weights and optimizer state and
//! the best weights so far; a re-run job (its worker was killed) continues after that epoch.
//! Epoch rows are keyed (run, epoch) and inserted with the checkpoint in one transaction, so
//! the metrics series never holds an epoch twice.
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sqlx::{PgPool, Row};
use trainyard_jobs::TrainArgs;
use uuid::Uuid;

use super::metrics::{evaluate, tune_thresholds, Metrics};
use super::webhook::{Telemetry, WebhookConfig};
use crate::datasets::{store, TaskType};
use crate::ml::classifier::{ClassifierSpec, TrainMode};
use crate::ml::text_encoder::pick_device;
use crate::ml::trainer::{
    EarlyStoppingMetric, Hyperparameters, SplitData, SplitInputs, TrainError, Trainer,
};
use crate::queue;
use crate::queue::worker::{JobError, WorkerState};

/// A run's stored settings.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub id: Uuid,
    pub dataset_id: Uuid,
    pub model_name: String,
    pub mode: TrainMode,
    pub task: TaskType,
    pub labels: Vec<String>,
    pub hyperparameters: Hyperparameters,
    pub device: String,
    pub auto_promote: bool,
    pub webhook: Option<WebhookConfig>,
    pub status: String,
    pub model_version: Option<i32>,
}

pub async fn load_run(pool: &PgPool, id: Uuid) -> Result<Option<RunSettings>, JobError> {
    let Some(row) = sqlx::query(
        "SELECT id, dataset_id, model_name, mode, task, labels, hyperparameters, device,
                auto_promote, webhook, status, model_version
         FROM training_runs WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let bad = |what: &str, e: serde_json::Error| JobError::Fatal(format!("run {id}: {what}: {e}"));
    let webhook: Option<serde_json::Value> = row.get("webhook");
    Ok(Some(RunSettings {
        id,
        dataset_id: row.get("dataset_id"),
        model_name: row.get("model_name"),
        mode: serde_json::from_value(json!(row.get::<String, _>("mode")))
            .map_err(|e| bad("mode", e))?,
        task: serde_json::from_value(json!(row.get::<String, _>("task")))
            .map_err(|e| bad("task", e))?,
        labels: serde_json::from_value(row.get("labels")).map_err(|e| bad("labels", e))?,
        hyperparameters: serde_json::from_value(row.get("hyperparameters"))
            .map_err(|e| bad("hyperparameters", e))?,
        device: row.get("device"),
        auto_promote: row.get("auto_promote"),
        webhook: webhook
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| bad("webhook", e))?,
        status: row.get("status"),
        model_version: row.get("model_version"),
    }))
}

/// Shared between the training thread and the async progress writer.
#[derive(Default)]
struct Progress {
    global_step: AtomicU64,
    total_steps: AtomicU64,
    epoch: AtomicU32,
    samples_per_sec_bits: AtomicU64,
    cancel: AtomicBool,
    finished: AtomicBool,
}

struct Checkpoint {
    epoch: u32,
    state: Vec<u8>,
    best_weights: Vec<u8>,
    best_epoch: u32,
    best_metric: f64,
    bad_epochs: u32,
}

/// What a finished training returns.
struct Outcome {
    spec: ClassifierSpec,
    weights: Vec<u8>,
    thresholds: Vec<f32>,
    validation: Metrics,
    test: Metrics,
    best_epoch: u32,
    best_metric: f64,
    device: String,
}

pub async fn run_training(
    state: &WorkerState,
    job_id: &str,
    args: &TrainArgs,
) -> Result<serde_json::Value, JobError> {
    let pool = &state.pool;
    if queue::cancel_requested(pool, job_id).await? {
        return Err(JobError::Cancelled);
    }
    let Some(run) = load_run(pool, args.run_id).await? else {
        return Err(JobError::Fatal(format!(
            "training run {} does not exist",
            args.run_id
        )));
    };
    match run.status.as_str() {
        "succeeded" => {
            return Ok(
                json!({"run_id": run.id, "model_version": run.model_version, "already_done": true}),
            )
        }
        "cancelled" => return Err(JobError::Cancelled),
        _ => {}
    }
    let dataset = store::get(pool, run.dataset_id)
        .await?
        .ok_or_else(|| JobError::Fatal(format!("dataset {} no longer exists", run.dataset_id)))?;
    if dataset.status != "ready" {
        return Err(JobError::Fatal(format!(
            "dataset {} is {}, not ready",
            dataset.id, dataset.status
        )));
    }
    let hp = run.hyperparameters.clone();
    let spec = ClassifierSpec {
        mode: run.mode,
        task: run.task,
        labels: run.labels.clone(),
        input_dim: dataset.dimensions as i64,
        hidden_size: hp.hidden_size,
        dropout: hp.dropout,
        max_tokens: hp.max_tokens,
    };
    let (train, validation, test) =
        load_splits(pool, &run, &dataset.embedding_model, dataset.dimensions).await?;
    let checkpoint = load_checkpoint(pool, run.id).await?;
    let device = pick_device(&run.device);
    sqlx::query(
        "UPDATE training_runs SET status = 'running', job_id = $2, error = NULL,
                started_at = coalesce(started_at, now()), total_epochs = $3, device_used = $4,
                resumed_from = $5, updated_at = now()
         WHERE id = $1",
    )
    .bind(run.id)
    .bind(job_id)
    .bind(hp.epochs as i32)
    .bind(format!("{device:?}").to_lowercase())
    .bind(checkpoint.as_ref().map(|c| c.epoch as i32))
    .execute(pool)
    .await?;
    if let Some(c) = &checkpoint {
        tracing::info!(run = %run.id, epoch = c.epoch, "resuming from checkpoint");
    }

    let webhook = run.webhook.clone().or_else(|| {
        let t = &state.settings.training;
        (!t.webhook_url.is_empty()).then(|| {
            let auth = (!t.webhook_authorization_env.is_empty())
                .then(|| std::env::var(&t.webhook_authorization_env).ok())
                .flatten();
            WebhookConfig::new(t.webhook_url.clone(), auth)
        })
    });
    let telemetry = Telemetry::start(
        webhook,
        run.id.to_string(),
        &tokio::runtime::Handle::current(),
    );
    let progress = Arc::new(Progress::default());
    let writer = tokio::spawn(write_progress(
        pool.clone(),
        run.id,
        job_id.to_string(),
        progress.clone(),
        Duration::from_secs_f64(state.settings.training.progress_interval_secs.max(0.05)),
    ));

    let context = BlockingContext {
        pool: pool.clone(),
        handle: tokio::runtime::Handle::current(),
        run_id: run.id,
        spec,
        hp,
        base_dir: PathBuf::from(&state.settings.local_model.dir),
        device,
        threads: state.settings.training.threads,
        telemetry: telemetry.clone(),
        progress: progress.clone(),
    };
    let outcome = tokio::task::spawn_blocking(move || {
        train_blocking(context, &train, &validation, &test, checkpoint)
    })
    .await
    .map_err(|e| JobError::Retryable(format!("training thread: {e}")))?;
    progress.finished.store(true, Ordering::SeqCst);
    let _ = writer.await;
    let stats = telemetry.finish(Duration::from_secs(5)).await;
    let outcome = outcome?;
    let version = crate::registry::register_version(
        pool,
        &run,
        &dataset.embedding_model,
        &outcome_record(&outcome),
        &stats,
    )
    .await?;
    tracing::info!(run = %run.id, model = %run.model_name, version, macro_f1 = outcome.test.macro_f1, "training finished");
    Ok(json!({
        "run_id": run.id,
        "model": run.model_name,
        "model_version": version,
        "best_epoch": outcome.best_epoch,
        "test_macro_f1": outcome.test.macro_f1,
        "telemetry": stats,
    }))
}

/// The parts of an outcome the registry stores.
pub struct OutcomeRecord<'a> {
    pub spec: &'a ClassifierSpec,
    pub weights: &'a [u8],
    pub thresholds: &'a [f32],
    pub validation: &'a Metrics,
    pub test: &'a Metrics,
    pub best_epoch: u32,
    pub best_metric: f64,
    pub device: &'a str,
}

fn outcome_record(o: &Outcome) -> OutcomeRecord<'_> {
    OutcomeRecord {
        spec: &o.spec,
        weights: &o.weights,
        thresholds: &o.thresholds,
        validation: &o.validation,
        test: &o.test,
        best_epoch: o.best_epoch,
        best_metric: o.best_metric,
        device: &o.device,
    }
}

/// Marks the run failed or cancelled when this failure ends its job; otherwise notes the error
/// and leaves it running (the job will be retried).
pub async fn record_failure(pool: &PgPool, run_id: Uuid, error: &JobError, last: bool) {
    let status = match (error, last) {
        (JobError::Cancelled, _) => "cancelled",
        (_, true) => "failed",
        (_, false) => "running",
    };
    let result = sqlx::query(
        "UPDATE training_runs SET status = $2, error = $3, updated_at = now(),
                finished_at = CASE WHEN $2 IN ('failed', 'cancelled') THEN now() ELSE finished_at END
         WHERE id = $1 AND status NOT IN ('succeeded', 'cancelled')",
    )
    .bind(run_id)
    .bind(status)
    .bind(error.to_string())
    .execute(pool)
    .await;
    if let Err(e) = result {
        tracing::error!(run = %run_id, "could not record the run's failure: {e}");
    }
}

/// One split while it is read: flat embeddings, texts, targets.
type SplitRows = (Vec<f32>, Vec<String>, Vec<Vec<Option<bool>>>);

async fn load_splits(
    pool: &PgPool,
    run: &RunSettings,
    embedding_model: &str,
    dimensions: i32,
) -> Result<(SplitData, SplitData, SplitData), JobError> {
    let rows = sqlx::query(
        "SELECT r.split, r.labels, r.text, e.vector
         FROM dataset_records r
         LEFT JOIN embeddings e ON e.model = $2 AND e.dimensions = $3 AND e.checksum = r.checksum
         WHERE r.dataset_id = $1 ORDER BY r.position",
    )
    .bind(run.dataset_id)
    .bind(embedding_model)
    .bind(dimensions)
    .fetch_all(pool)
    .await?;
    let head = run.mode == TrainMode::Head;
    let mut splits: [SplitRows; 3] = Default::default();
    for row in rows {
        let labels: serde_json::Value = row.get("labels");
        let targets: Vec<Option<bool>> = run
            .labels
            .iter()
            .map(|l| labels.get(l).and_then(|v| v.as_i64()).map(|v| v == 1))
            .collect();
        if targets.iter().all(Option::is_none) {
            continue; // nothing annotated: contributes nothing anywhere
        }
        let index = match row.get::<String, _>("split").as_str() {
            "train" => 0,
            "validation" => 1,
            _ => 2,
        };
        let split = &mut splits[index];
        if head {
            let vector: Option<Vec<u8>> = row.get("vector");
            let vector = vector.ok_or_else(|| {
                JobError::Fatal(format!(
                    "dataset {} has a record without a stored embedding",
                    run.dataset_id
                ))
            })?;
            split.0.extend(crate::embedding::bytes_to_vector(&vector));
        } else {
            split.1.push(row.get("text"));
        }
        split.2.push(targets);
    }
    let [train, validation, test] = splits.map(|(flat, texts, targets)| SplitData {
        inputs: if head {
            SplitInputs::Embeddings {
                dims: dimensions as usize,
                flat,
            }
        } else {
            SplitInputs::Texts(texts)
        },
        targets,
    });
    if train.is_empty() {
        return Err(JobError::Fatal(
            "the dataset's training split has no annotated record".into(),
        ));
    }
    Ok((train, validation, test))
}

async fn load_checkpoint(pool: &PgPool, run_id: Uuid) -> Result<Option<Checkpoint>, JobError> {
    let row = sqlx::query(
        "SELECT epoch, state, best_weights, best_epoch, best_metric, bad_epochs
         FROM training_checkpoints WHERE run_id = $1",
    )
    .bind(run_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| Checkpoint {
        epoch: r.get::<i32, _>("epoch") as u32,
        state: r.get("state"),
        best_weights: r.get("best_weights"),
        best_epoch: r.get::<i32, _>("best_epoch") as u32,
        best_metric: r.get("best_metric"),
        bad_epochs: r.get::<i32, _>("bad_epochs") as u32,
    }))
}

/// Writes step/epoch/throughput to the run every `interval` and picks up cancellation.
async fn write_progress(
    pool: PgPool,
    run_id: Uuid,
    job_id: String,
    progress: Arc<Progress>,
    interval: Duration,
) {
    let mut last = (u64::MAX, u32::MAX);
    loop {
        let finished = progress.finished.load(Ordering::SeqCst);
        let step = progress.global_step.load(Ordering::Relaxed);
        let epoch = progress.epoch.load(Ordering::Relaxed);
        if (step, epoch) != last {
            last = (step, epoch);
            let sps = f64::from_bits(progress.samples_per_sec_bits.load(Ordering::Relaxed));
            let _ = sqlx::query(
                "UPDATE training_runs SET global_step = $2, total_steps = $3, epoch = $4,
                        samples_per_sec = $5, updated_at = now()
                 WHERE id = $1 AND status = 'running'",
            )
            .bind(run_id)
            .bind(step as i64)
            .bind(progress.total_steps.load(Ordering::Relaxed) as i64)
            .bind(epoch as i32)
            .bind(sps.is_finite().then_some(sps))
            .execute(&pool)
            .await;
            let _ = sqlx::query(
                "UPDATE job_info SET progress_done = $2, progress_total = $3 WHERE job_id = $1",
            )
            .bind(&job_id)
            .bind(step as i64)
            .bind(progress.total_steps.load(Ordering::Relaxed) as i64)
            .execute(&pool)
            .await;
        }
        if finished {
            return;
        }
        if let Ok(true) = queue::cancel_requested(&pool, &job_id).await {
            progress.cancel.store(true, Ordering::SeqCst);
        }
        tokio::time::sleep(interval).await;
    }
}

struct BlockingContext {
    pool: PgPool,
    handle: tokio::runtime::Handle,
    run_id: Uuid,
    spec: ClassifierSpec,
    hp: Hyperparameters,
    base_dir: PathBuf,
    device: tch::Device,
    threads: i32,
    telemetry: Telemetry,
    progress: Arc<Progress>,
}

fn to_job_error(e: TrainError) -> JobError {
    match e {
        TrainError::Cancelled => JobError::Cancelled,
        // Training is deterministic: the same inputs fail the same way.
        TrainError::Failed(message) => JobError::Fatal(message),
    }
}

fn train_blocking(
    ctx: BlockingContext,
    train: &SplitData,
    validation: &SplitData,
    test: &SplitData,
    checkpoint: Option<Checkpoint>,
) -> Result<Outcome, JobError> {
    if ctx.device == tch::Device::Cpu {
        let threads = if ctx.threads > 0 {
            ctx.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get() as i32)
        };
        tch::set_num_threads(threads);
    }
    let base_dir = Some(ctx.base_dir.as_path());
    let labels = ctx.spec.labels.clone();
    let hp = ctx.hp.clone();
    let mut trainer = Trainer::new(ctx.spec.clone(), hp.clone(), train, base_dir, ctx.device)
        .map_err(to_job_error)?;
    ctx.progress
        .total_steps
        .store(trainer.total_steps(), Ordering::Relaxed);
    let (first_epoch, mut best) = match checkpoint {
        Some(c) => {
            trainer.restore_state(&c.state).map_err(to_job_error)?;
            ctx.progress
                .global_step
                .store(c.epoch as u64 * trainer.steps_per_epoch, Ordering::Relaxed);
            let best = Best {
                weights: c.best_weights,
                epoch: c.best_epoch,
                metric: c.best_metric,
                bad_epochs: c.bad_epochs,
            };
            (c.epoch + 1, best)
        }
        None => {
            let weights = trainer
                .model
                .weights_blob()
                .map_err(|e| JobError::Fatal(e.to_string()))?;
            (
                1,
                Best {
                    weights,
                    epoch: 0,
                    metric: f64::NEG_INFINITY,
                    bad_epochs: 0,
                },
            )
        }
    };
    let val_split = trainer.prepare(validation).map_err(to_job_error)?;
    let stopped_early = |best: &Best| hp.patience > 0 && best.bad_epochs >= hp.patience;
    for epoch in first_epoch..=hp.epochs {
        if stopped_early(&best) {
            break;
        }
        ctx.progress.epoch.store(epoch, Ordering::Relaxed);
        let telemetry = &ctx.telemetry;
        let progress = &ctx.progress;
        let log_every = hp.log_every_steps.max(1);
        let train_loss = trainer
            .run_epoch(epoch, &mut |info| {
                progress
                    .global_step
                    .store(info.global_step, Ordering::Relaxed);
                progress
                    .samples_per_sec_bits
                    .store(info.samples_per_sec.to_bits(), Ordering::Relaxed);
                if info.global_step % log_every == 0 {
                    telemetry.log_step(
                        info.global_step,
                        epoch,
                        json!({"loss": info.loss, "learning_rate": info.learning_rate,
                               "samples_per_sec": info.samples_per_sec}),
                    );
                }
                !progress.cancel.load(Ordering::Relaxed)
            })
            .map_err(to_job_error)?;
        let (scores, val_loss) = trainer.evaluate(&val_split).map_err(to_job_error)?;
        let thresholds = tune_thresholds(&scores, &validation.targets, 0.5);
        let metrics = evaluate(&labels, &scores, &validation.targets, &thresholds);
        let value = if validation.is_empty() {
            -train_loss
        } else {
            match hp.early_stopping_metric {
                EarlyStoppingMetric::ValMacroF1 => metrics.macro_f1,
                EarlyStoppingMetric::ValMicroF1 => metrics.micro_f1,
                EarlyStoppingMetric::ValLoss => -val_loss,
            }
        };
        let improved = value > best.metric;
        if improved {
            best.weights = trainer
                .model
                .weights_blob()
                .map_err(|e| JobError::Fatal(e.to_string()))?;
            best.epoch = epoch;
            best.metric = value;
            best.bad_epochs = 0;
        } else {
            best.bad_epochs += 1;
        }
        let state = trainer.state_blob().map_err(to_job_error)?;
        let global_step = epoch as u64 * trainer.steps_per_epoch;
        let record = EpochRecord {
            epoch,
            global_step,
            train_loss,
            val_loss: val_loss.is_finite().then_some(val_loss),
            metrics: serde_json::to_value(&metrics).unwrap_or_default(),
            state,
            best_weights: improved.then_some(best.weights.as_slice()),
            best_epoch: best.epoch,
            best_metric: best.metric,
            bad_epochs: best.bad_epochs,
        };
        ctx.handle
            .block_on(save_epoch(&ctx.pool, ctx.run_id, &record))
            .map_err(|e| JobError::Retryable(format!("saving epoch {epoch}: {e}")))?;
        ctx.telemetry.log_eval(
            global_step,
            epoch,
            json!({"train_loss": train_loss, "val_loss": record.val_loss,
                   "macro_f1": metrics.macro_f1, "micro_f1": metrics.micro_f1,
                   "macro_precision": metrics.macro_precision, "macro_recall": metrics.macro_recall,
                   "macro_roc_auc": metrics.macro_roc_auc}),
        );
    }
    // The best epoch's weights, thresholds from validation, then the test split.
    trainer
        .model
        .load_weights_blob(&best.weights)
        .map_err(|e| JobError::Fatal(e.to_string()))?;
    let (val_scores, _) = trainer.evaluate(&val_split).map_err(to_job_error)?;
    let thresholds = tune_thresholds(&val_scores, &validation.targets, 0.5);
    let validation_metrics = evaluate(&labels, &val_scores, &validation.targets, &thresholds);
    let (test_scores, _) = trainer
        .evaluate(&trainer.prepare(test).map_err(to_job_error)?)
        .map_err(to_job_error)?;
    let test_metrics = evaluate(&labels, &test_scores, &test.targets, &thresholds);
    Ok(Outcome {
        spec: ctx.spec.clone(),
        weights: best.weights,
        thresholds,
        validation: validation_metrics,
        test: test_metrics,
        best_epoch: best.epoch,
        best_metric: best.metric,
        device: format!("{:?}", ctx.device).to_lowercase(),
    })
}

struct Best {
    weights: Vec<u8>,
    epoch: u32,
    metric: f64,
    bad_epochs: u32,
}

struct EpochRecord<'a> {
    epoch: u32,
    global_step: u64,
    train_loss: f64,
    val_loss: Option<f64>,
    metrics: serde_json::Value,
    state: Vec<u8>,
    best_weights: Option<&'a [u8]>,
    best_epoch: u32,
    best_metric: f64,
    bad_epochs: u32,
}

/// The epoch's metrics and the checkpoint, in one transaction. An epoch already recorded (a
/// job re-run after its worker died between commit and acknowledgement) is left as it was.
async fn save_epoch(pool: &PgPool, run_id: Uuid, r: &EpochRecord<'_>) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO training_epochs (run_id, epoch, global_step, train_loss, val_loss, metrics)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (run_id, epoch) DO NOTHING",
    )
    .bind(run_id)
    .bind(r.epoch as i32)
    .bind(r.global_step as i64)
    .bind(r.train_loss)
    .bind(r.val_loss)
    .bind(&r.metrics)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 1 {
        sqlx::query(
            "INSERT INTO training_checkpoints (run_id, epoch, state, best_weights, best_epoch, best_metric, bad_epochs)
             VALUES ($1, $2, $3, coalesce($4, ''::bytea), $5, $6, $7)
             ON CONFLICT (run_id) DO UPDATE SET epoch = EXCLUDED.epoch, state = EXCLUDED.state,
                 best_weights = coalesce($4, training_checkpoints.best_weights),
                 best_epoch = EXCLUDED.best_epoch, best_metric = EXCLUDED.best_metric,
                 bad_epochs = EXCLUDED.bad_epochs, updated_at = now()",
        )
        .bind(run_id)
        .bind(r.epoch as i32)
        .bind(&r.state)
        .bind(r.best_weights)
        .bind(r.best_epoch as i32)
        .bind(r.best_metric)
        .bind(r.bad_epochs as i32)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE training_runs SET epoch = $2, best_epoch = $3, best_metric = $4, updated_at = now()
             WHERE id = $1",
        )
        .bind(run_id)
        .bind(r.epoch as i32)
        .bind(r.best_epoch as i32)
        .bind(r.best_metric)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}
