//! The blocking half of a `train` job: the training thread's epochs, evaluation, early
//! stopping and checkpoints, and the async writer that publishes its progress.
//!
//! A validation split with no annotated record is not scored: no validation metric is recorded
//! (never a 0.0), early stopping follows the training loss (the lowest is the best epoch; the
//! run stops after `patience` epochs without a lower one), and every label keeps the threshold
//! [`DEFAULT_THRESHOLD`]: thresholds tuned on the training split would fit its overconfident
//! scores, not new texts.
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::metrics::{confusion_matrix, evaluate, pr_curves, tune_thresholds, Metrics};
use super::webhook::Telemetry;
use super::TrainingError;
use crate::artifacts;
use crate::ml::classifier::ClassifierSpec;
use crate::ml::trainer::{EarlyStoppingMetric, Hyperparameters, SplitData, TrainError, Trainer};
use crate::queue::JobContext;

/// Shared between the training thread and the async progress writer.
#[derive(Default)]
pub(super) struct Progress {
    pub(super) global_step: AtomicU64,
    pub(super) total_steps: AtomicU64,
    pub(super) epoch: AtomicU32,
    pub(super) samples_per_sec_bits: AtomicU64,
    pub(super) cancel: AtomicBool,
    /// The worker is shutting down: stop at the next step and hand the job back.
    pub(super) interrupt: AtomicBool,
    pub(super) finished: AtomicBool,
}

pub(super) struct Checkpoint {
    pub(super) epoch: u32,
    pub(super) state: Vec<u8>,
    pub(super) best_weights: Vec<u8>,
    pub(super) best_epoch: u32,
    pub(super) best_metric: f64,
    pub(super) bad_epochs: u32,
}

/// Every label's threshold when there is no validation split to tune it on (and a label's
/// threshold when validation has none of its positives).
pub(super) const DEFAULT_THRESHOLD: f32 = 0.5;

/// What a finished training returns.
pub(super) struct Outcome {
    pub(super) spec: ClassifierSpec,
    pub(super) weights: Vec<u8>,
    pub(super) thresholds: Vec<f32>,
    /// `None` when the validation split has no annotated record (see the module's doc).
    pub(super) validation: Option<Metrics>,
    /// `None` when the test split has no annotated record: there is nothing to score, and
    /// metrics of 0.0 would read as a failed model.
    pub(super) test: Option<Metrics>,
    pub(super) best_epoch: u32,
    pub(super) best_metric: f64,
    pub(super) device: String,
}

pub(super) async fn load_checkpoint(
    pool: &PgPool,
    run_id: Uuid,
) -> Result<Option<Checkpoint>, TrainingError> {
    let row = sqlx::query(
        "SELECT epoch, state, best_weights, state_artifact, best_weights_artifact, best_epoch,
                best_metric, bad_epochs
         FROM training_checkpoints WHERE run_id = $1",
    )
    .bind(run_id)
    .fetch_optional(pool)
    .await?;
    let Some(r) = row else {
        return Ok(None);
    };
    let state = artifacts::read_either(pool, r.get("state_artifact"), r.get("state")).await?;
    // No best weights yet (no epoch improved): empty, as before artifacts.
    let best_artifact: Option<Uuid> = r.get("best_weights_artifact");
    let best_inline: Option<Vec<u8>> = r.get("best_weights");
    let best_weights = if best_artifact.is_none() && best_inline.is_none() {
        Vec::new()
    } else {
        artifacts::read_either(pool, best_artifact, best_inline).await?
    };
    Ok(Some(Checkpoint {
        epoch: r.get::<i32, _>("epoch") as u32,
        state,
        best_weights,
        best_epoch: r.get::<i32, _>("best_epoch") as u32,
        best_metric: r.get("best_metric"),
        bad_epochs: r.get::<i32, _>("bad_epochs") as u32,
    }))
}

/// Writes step/epoch/throughput to the run every `interval` and picks up cancellation and the
/// worker's shutdown.
pub(super) async fn write_progress(
    ctx: JobContext,
    run_id: Uuid,
    progress: Arc<Progress>,
    interval: Duration,
) {
    let pool = &ctx.pool;
    let mut last = (u64::MAX, u32::MAX, u64::MAX);
    loop {
        let finished = progress.finished.load(Ordering::SeqCst);
        let step = progress.global_step.load(Ordering::Relaxed);
        let epoch = progress.epoch.load(Ordering::Relaxed);
        let total = progress.total_steps.load(Ordering::Relaxed);
        if (step, epoch, total) != last {
            last = (step, epoch, total);
            let sps = f64::from_bits(progress.samples_per_sec_bits.load(Ordering::Relaxed));
            let _ = sqlx::query(
                "UPDATE training_runs SET global_step = $2, total_steps = $3, epoch = $4,
                        samples_per_sec = $5, updated_at = now()
                 WHERE id = $1 AND status = 'running'",
            )
            .bind(run_id)
            .bind(step as i64)
            .bind(total as i64)
            .bind(epoch as i32)
            .bind(sps.is_finite().then_some(sps))
            .execute(pool)
            .await;
            ctx.set_progress(step as i64, Some(total as i64));
        }
        if finished {
            return;
        }
        if ctx.stopping.is_set() {
            progress.interrupt.store(true, Ordering::SeqCst);
        }
        if ctx.cancel_requested() {
            progress.cancel.store(true, Ordering::SeqCst);
        }
        tokio::time::sleep(interval).await;
    }
}

pub(super) struct BlockingContext {
    pub(super) pool: PgPool,
    pub(super) handle: tokio::runtime::Handle,
    pub(super) run_id: Uuid,
    pub(super) spec: ClassifierSpec,
    pub(super) hp: Hyperparameters,
    pub(super) base_dir: PathBuf,
    pub(super) device: crate::ml::Device,
    pub(super) threads: i32,
    pub(super) telemetry: Telemetry,
    pub(super) progress: Arc<Progress>,
    /// The job's span: every epoch's span is its child (the thread does not inherit it).
    pub(super) span: tracing::Span,
    pub(super) model_name: String,
}

pub(super) fn train_blocking(
    ctx: BlockingContext,
    train: &SplitData,
    validation: &SplitData,
    test: &SplitData,
    checkpoint: Option<Checkpoint>,
) -> Result<Outcome, TrainingError> {
    crate::ml::use_cpu_threads(ctx.device, ctx.threads);
    let base_dir = Some(ctx.base_dir.as_path());
    let labels = ctx.spec.labels.clone();
    let hp = ctx.hp.clone();
    let mut trainer = Trainer::new(ctx.spec.clone(), hp.clone(), train, base_dir, ctx.device)?;
    ctx.progress
        .total_steps
        .store(trainer.total_steps(), Ordering::Relaxed);
    let (first_epoch, mut best) = match checkpoint {
        Some(c) => {
            trainer.restore_state(&c.state)?;
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
                .map_err(|e| TrainingError::Model(e.to_string()))?;
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
    let val_split = if validation.is_empty() {
        None
    } else {
        Some(trainer.prepare(validation)?)
    };
    let stopped_early = |best: &Best| hp.patience > 0 && best.bad_epochs >= hp.patience;
    for epoch in first_epoch..=hp.epochs {
        if stopped_early(&best) {
            break;
        }
        // Shutting down between epochs: the last one is saved, the next attempt starts here.
        if ctx.progress.interrupt.load(Ordering::SeqCst) {
            return Err(TrainingError::Interrupted);
        }
        ctx.progress.epoch.store(epoch, Ordering::Relaxed);
        let epoch_span = tracing::info_span!(
            parent: &ctx.span,
            "train_epoch",
            run.id = %ctx.run_id,
            epoch,
            train_loss = tracing::field::Empty,
            val_macro_f1 = tracing::field::Empty,
        );
        let _entered = epoch_span.enter();
        let steps_before = ctx.progress.global_step.load(Ordering::Relaxed);
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
                    && !progress.interrupt.load(Ordering::Relaxed)
            })
            .map_err(|e| match e {
                // Stopped for the worker's shutdown, not by a user: hand the job back.
                TrainError::Cancelled
                    if !progress.cancel.load(Ordering::SeqCst)
                        && progress.interrupt.load(Ordering::SeqCst) =>
                {
                    TrainingError::Interrupted
                }
                e => e.into(),
            })?;
        // (validation metrics, validation loss), when there is a validation split.
        let scored = match &val_split {
            Some(split) => {
                let (scores, val_loss) = trainer.evaluate(split)?;
                let thresholds = tune_thresholds(&scores, &validation.targets, DEFAULT_THRESHOLD);
                let metrics = evaluate(&labels, &scores, &validation.targets, &thresholds);
                Some((metrics, val_loss))
            }
            None => None,
        };
        let value = match &scored {
            None => -train_loss,
            Some((metrics, val_loss)) => match hp.early_stopping_metric {
                EarlyStoppingMetric::ValMacroF1 => metrics.macro_f1,
                EarlyStoppingMetric::ValMicroF1 => metrics.micro_f1,
                EarlyStoppingMetric::ValLoss => -val_loss,
            },
        };
        let metrics = scored.as_ref().map(|(m, _)| m);
        let val_loss = scored.as_ref().map(|(_, l)| *l);
        let improved = value > best.metric;
        if improved {
            best.weights = trainer
                .model
                .weights_blob()
                .map_err(|e| TrainingError::Model(e.to_string()))?;
            best.epoch = epoch;
            best.metric = value;
            best.bad_epochs = 0;
        } else {
            best.bad_epochs += 1;
        }
        let state = trainer.state_blob()?;
        let global_step = epoch as u64 * trainer.steps_per_epoch;
        let record = EpochRecord {
            epoch,
            global_step,
            train_loss,
            val_loss: val_loss.filter(|l| l.is_finite()),
            metrics: split_metrics_json(VALIDATION_SPLIT, metrics),
            state,
            best_weights: improved.then_some(best.weights.as_slice()),
            best_epoch: best.epoch,
            best_metric: best.metric,
            bad_epochs: best.bad_epochs,
        };
        ctx.handle
            .block_on(save_epoch(&ctx.pool, ctx.run_id, &record))
            .map_err(|e| TrainingError::Transient(format!("saving epoch {epoch}: {e}")))?;
        record_epoch_metrics(&ctx, &epoch_span, &record, metrics);
        let steps = ctx.progress.global_step.load(Ordering::Relaxed);
        crate::telemetry::metrics().training_steps.add(
            steps.saturating_sub(steps_before),
            &[crate::telemetry::instruments::model(&ctx.model_name)],
        );
        let eval = match metrics {
            Some(m) => json!({"train_loss": train_loss, "val_loss": record.val_loss,
                   "macro_f1": m.macro_f1, "micro_f1": m.micro_f1,
                   "macro_precision": m.macro_precision, "macro_recall": m.macro_recall,
                   "macro_roc_auc": m.macro_roc_auc}),
            None => json!({"train_loss": train_loss, "validation_split": EMPTY_SPLIT}),
        };
        ctx.telemetry.log_eval(global_step, epoch, eval);
    }
    // Stopped early: the run is complete at the step it reached, not at a fraction of the plan.
    let reached = ctx.progress.global_step.load(Ordering::Relaxed);
    if reached > 0 && reached < ctx.progress.total_steps.load(Ordering::Relaxed) {
        ctx.progress.total_steps.store(reached, Ordering::Relaxed);
    }
    // The best epoch's weights, thresholds from validation (or the default), then the test split.
    trainer
        .model
        .load_weights_blob(&best.weights)
        .map_err(|e| TrainingError::Model(e.to_string()))?;
    let (thresholds, validation_metrics) = match &val_split {
        Some(split) => {
            let (val_scores, _) = trainer.evaluate(split)?;
            let thresholds = tune_thresholds(&val_scores, &validation.targets, DEFAULT_THRESHOLD);
            let mut metrics = evaluate(&labels, &val_scores, &validation.targets, &thresholds);
            metrics.pr_curves = pr_curves(&labels, &val_scores, &validation.targets, &thresholds);
            (thresholds, Some(metrics))
        }
        None => (vec![DEFAULT_THRESHOLD; labels.len()], None),
    };
    let test_metrics = if test.is_empty() {
        None
    } else {
        let (test_scores, _) = trainer.evaluate(&trainer.prepare(test)?)?;
        let mut metrics = evaluate(&labels, &test_scores, &test.targets, &thresholds);
        if ctx.spec.task == crate::datasets::TaskType::MultiClass {
            metrics.confusion_matrix = Some(confusion_matrix(&labels, &test_scores, &test.targets));
        }
        Some(metrics)
    };
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

/// Publishes an epoch's loss, validation F1 and throughput as gauges (by run and model); a
/// validation figure that could not be computed (no validation split) is not published.
fn record_epoch_metrics(
    ctx: &BlockingContext,
    span: &tracing::Span,
    record: &EpochRecord<'_>,
    metrics: Option<&Metrics>,
) {
    use crate::telemetry::instruments::{model, run, split};
    let m = crate::telemetry::metrics();
    let run = run(ctx.run_id);
    let model = model(&ctx.model_name);
    span.record("train_loss", record.train_loss);
    m.training_loss.record(
        record.train_loss,
        &[run.clone(), model.clone(), split("train")],
    );
    if let Some(val_loss) = record.val_loss {
        m.training_loss
            .record(val_loss, &[run.clone(), model.clone(), split("validation")]);
    }
    if let Some(f1) = metrics.map(|v| v.macro_f1).filter(|f| f.is_finite()) {
        span.record("val_macro_f1", f1);
        m.training_validation_f1
            .record(f1, &[run.clone(), model.clone()]);
    }
    let sps = f64::from_bits(ctx.progress.samples_per_sec_bits.load(Ordering::Relaxed));
    if sps.is_finite() && sps > 0.0 {
        m.training_samples_per_second.record(sps, &[run, model]);
    }
}

/// The note stored for a split with no annotated record.
pub const EMPTY_SPLIT: &str = "empty";
/// The note's key for the validation split (`{"validation_split": "empty", "rows": 0}`).
pub const VALIDATION_SPLIT: &str = "validation_split";
/// The note's key for the test split (`{"test_split": "empty", "rows": 0}`).
pub const TEST_SPLIT: &str = "test_split";

/// A split's metrics as stored (an epoch's `metrics`, a run's `validation_metrics` and
/// `test_metrics`, a version's `metrics.validation` and `metrics.test`): the metrics, or, when
/// the split had no annotated record, `{"<key>": "empty", "rows": 0}`: no figure at all rather
/// than zeros that would read as a failed model.
pub fn split_metrics_json(key: &str, metrics: Option<&Metrics>) -> serde_json::Value {
    match metrics {
        Some(m) => json!(m),
        None => json!({key: EMPTY_SPLIT, "rows": 0}),
    }
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
#[tracing::instrument(name = "db.save_epoch", skip_all, fields(db.system.name = "postgresql", epoch = r.epoch))]
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
        // The new state (and best weights, when they improved) as artifacts; the ones they
        // replace are deleted in the same transaction.
        let old: Option<(Option<Uuid>, Option<Uuid>)> = sqlx::query_as(
            "SELECT state_artifact, best_weights_artifact FROM training_checkpoints
             WHERE run_id = $1 FOR UPDATE",
        )
        .bind(run_id)
        .fetch_optional(&mut *tx)
        .await?;
        let (old_state, old_best) = old.unwrap_or((None, None));
        let state = artifacts::write(&mut tx, &r.state).await?;
        let best = match r.best_weights {
            Some(bytes) => Some(artifacts::write(&mut tx, bytes).await?),
            None => None,
        };
        let mut replaced = vec![old_state];
        if best.is_some() {
            replaced.push(old_best);
        }
        for id in replaced.into_iter().flatten() {
            artifacts::delete(&mut tx, id).await?;
        }
        sqlx::query(
            "INSERT INTO training_checkpoints (run_id, epoch, state_artifact, best_weights_artifact,
                                              best_epoch, best_metric, bad_epochs)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (run_id) DO UPDATE SET epoch = EXCLUDED.epoch,
                 state = NULL, state_artifact = EXCLUDED.state_artifact,
                 best_weights = CASE WHEN $4 IS NULL THEN training_checkpoints.best_weights END,
                 best_weights_artifact = coalesce($4, training_checkpoints.best_weights_artifact),
                 best_epoch = EXCLUDED.best_epoch, best_metric = EXCLUDED.best_metric,
                 bad_epochs = EXCLUDED.bad_epochs, updated_at = now()",
        )
        .bind(run_id)
        .bind(r.epoch as i32)
        .bind(state)
        .bind(best)
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
