//! The `train` job: loads a run's dataset from Postgres, trains epoch by epoch (checkpointing
//! each completed epoch), tunes per-label thresholds on validation, scores the test split and
//! registers the model version, all idempotently.
//!
//! Resume: the checkpoint row holds the last completed epoch's weights and optimizer state and
//! the best weights so far; a re-run job (its worker was killed) continues after that epoch.
//! Epoch rows are keyed (run, epoch) and inserted with the checkpoint in one transaction, so
//! the metrics series never holds an epoch twice. A worker that shuts down (SIGTERM) stops the
//! run at its next step and hands the job back; the next attempt resumes the same way.
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;
use trainyard_jobs::TrainArgs;
use uuid::Uuid;

use super::epochs::{
    load_checkpoint, split_metrics_json, train_blocking, write_progress, BlockingContext, Progress,
    EMPTY_SPLIT, TEST_SPLIT, VALIDATION_SPLIT,
};
pub use super::run_data::{load_run, RunSettings};
use super::run_data::{load_splits, Splits};
use super::webhook::{AddressPolicy, Telemetry, WebhookConfig};
use super::TrainingError;
use crate::datasets::store;
use crate::ml::classifier::{ClassifierSpec, TrainMode};
use crate::ml::text_encoder::pick_device;
use crate::queue::{JobContext, JobError};
use crate::secrets::SecretBox;
use crate::worker_state::WorkerState;

/// The `train` handler: trains, and records the failure on the run (failed or cancelled when
/// this failure ends the job). The one place a [`TrainingError`] becomes the queue's error.
pub async fn handle_train(
    state: &WorkerState,
    ctx: &JobContext,
    args: TrainArgs,
) -> Result<serde_json::Value, JobError> {
    tracing::info!(job = %ctx.id, run = %args.run_id, "train started");
    let result = run_training(state, ctx, &args)
        .await
        .map_err(JobError::from);
    if let Err(e) = &result {
        tracing::warn!(job = %ctx.id, run = %args.run_id, error = %e, "train failed");
        let last = ctx.is_last_attempt(e).await;
        record_failure(&state.pool, args.run_id, e, last).await;
    }
    result
}

pub async fn run_training(
    state: &WorkerState,
    ctx: &JobContext,
    args: &TrainArgs,
) -> Result<serde_json::Value, TrainingError> {
    let pool = &state.pool;
    let job_id = ctx.id.as_str();
    if ctx.cancel_requested() {
        return Err(TrainingError::Cancelled);
    }
    if ctx.stopping.is_set() {
        return Err(TrainingError::Interrupted);
    }
    let Some(run) = load_run(pool, args.run_id).await? else {
        return Err(TrainingError::Invalid(format!(
            "training run {} does not exist",
            args.run_id
        )));
    };
    match run.status {
        super::runs::RunStatus::Succeeded => {
            // A worker killed between registering the version and asking for the gate's
            // evaluation left the job unacknowledged: ask now (once per run).
            let evaluation = match run.model_version {
                Some(version) => promotion_gate(state, &run, version).await?,
                None => None,
            };
            return Ok(
                json!({"run_id": run.id, "model_version": run.model_version, "already_done": true, "gate_evaluation_id": evaluation}),
            );
        }
        super::runs::RunStatus::Cancelled => return Err(TrainingError::Cancelled),
        _ => {}
    }
    let dataset = store::get(pool, run.dataset_id).await?.ok_or_else(|| {
        TrainingError::Invalid(format!("dataset {} no longer exists", run.dataset_id))
    })?;
    if dataset.status != store::DatasetStatus::Ready {
        return Err(TrainingError::Invalid(format!(
            "dataset {} is {}, not ready",
            dataset.id, dataset.status
        )));
    }
    let hp = run.hyperparameters.clone();
    // The encoder a finetune starts from (and a head's serving encoder): the run's base model,
    // else (heads, older runs) the dataset's embedding model when it is local.
    let encoder_model = match run.mode {
        TrainMode::Finetune => run.base_model.clone(),
        TrainMode::Head => None,
    }
    .or_else(|| {
        state
            .settings
            .embedding_models
            .get(&dataset.embedding_model)
            .filter(|m| m.is_local())
            .map(|_| dataset.embedding_model.clone())
    });
    let checkpoint = match &encoder_model {
        Some(key) => Some(
            crate::embedding::local_checkpoint(&state.settings, key)
                .map_err(|e| TrainingError::Invalid(format!("base model: {e}")))?,
        ),
        None => None,
    };
    let (base_dir, pooling) = match (&checkpoint, run.mode) {
        (Some(c), _) => (c.dir.clone(), c.pooling),
        (None, TrainMode::Finetune) => (
            PathBuf::from(&state.settings.local_model.dir),
            Default::default(),
        ),
        (None, TrainMode::Head) => (PathBuf::new(), Default::default()),
    };
    let input_dim = match run.mode {
        TrainMode::Finetune => {
            crate::ml::encoder::EncoderConfig::from_file(&base_dir.join("config.json"))
                .map_err(|e| {
                    TrainingError::Invalid(format!("base model {}: {e}", base_dir.display()))
                })?
                .shape
                .hidden_size
        }
        TrainMode::Head => dataset.dimensions as i64,
    };
    let spec = ClassifierSpec {
        mode: run.mode,
        task: run.task,
        labels: run.labels.clone(),
        input_dim,
        hidden_size: hp.hidden_size,
        dropout: hp.dropout,
        max_tokens: hp.max_tokens,
        pooling,
        base_model: match run.mode {
            TrainMode::Finetune => encoder_model.clone(),
            TrainMode::Head => None,
        },
    };
    let Splits {
        train,
        validation,
        test,
        label_coverage,
    } = load_splits(
        pool,
        &run,
        &dataset.embedding_model,
        dataset.dimensions,
        state.settings.training.head_vectors_in_memory_mb,
    )
    .await?;
    let checkpoint = load_checkpoint(pool, run.id).await?;
    // Stored as the API took it (auto, cpu or cuda); anything else means auto, as before.
    let device = pick_device(run.device.parse().unwrap_or_default());
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

    let allowed = AddressPolicy::allowing(&state.settings.training.webhook_allowed_hosts);
    // The run's own webhook (its credentials sealed by the API), else the operator's.
    let webhook = match run.webhook.clone().map(|w| w.with_addresses(allowed)) {
        Some(mut w) => {
            let sealed = w.authorization.clone().filter(|a| SecretBox::is_sealed(a));
            match sealed {
                None => Some(w),
                Some(sealed) => {
                    let var = &state.settings.training.secrets_key_env;
                    let opened = SecretBox::from_env(var).and_then(|b| {
                        b.ok_or_else(|| format!("{var} is not set here"))?
                            .open(&sealed)
                    });
                    match opened {
                        Ok(plain) => {
                            w.authorization = Some(plain);
                            Some(w)
                        }
                        Err(e) => {
                            tracing::warn!(
                                run = %run.id,
                                "the run's webhook is off: its credentials cannot be opened ({e})"
                            );
                            None
                        }
                    }
                }
            }
        }
        None => {
            let t = &state.settings.training;
            (!t.webhook_url.is_empty()).then(|| {
                let auth = (!t.webhook_authorization_env.is_empty())
                    .then(|| std::env::var(&t.webhook_authorization_env).ok())
                    .flatten();
                // The operator's own endpoint: trusted wherever it is.
                WebhookConfig::new(t.webhook_url.clone(), auth).with_addresses(AddressPolicy {
                    allow_all: true,
                    allowed_hosts: Vec::new(),
                })
            })
        }
    };
    let telemetry = Telemetry::start(
        webhook,
        run.id.to_string(),
        &tokio::runtime::Handle::current(),
    );
    let progress = Arc::new(Progress::default());
    let writer = tokio::spawn(write_progress(
        ctx.clone(),
        run.id,
        progress.clone(),
        Duration::from_secs_f64(state.settings.training.progress_interval_secs.max(0.05)),
    ));

    let context = BlockingContext {
        pool: pool.clone(),
        handle: tokio::runtime::Handle::current(),
        run_id: run.id,
        spec,
        hp,
        base_dir,
        device,
        threads: state.settings.training.threads,
        telemetry: telemetry.clone(),
        progress: progress.clone(),
        span: tracing::Span::current(),
        model_name: run.model_name.clone(),
    };
    let outcome = tokio::task::spawn_blocking(move || {
        let outcome = train_blocking(context, &train, &validation, &test, checkpoint);
        // The run's tensors, batches and splits are freed by now; the inference malloc
        // settings (see ml::allocator) would keep their pages in this thread's arena for good,
        // so a worker would grow with every run it trains.
        drop((train, validation, test));
        crate::ml::allocator::release_free_memory();
        outcome
    })
    .await
    .map_err(|e| TrainingError::Transient(format!("training thread: {e}")))?;
    progress.finished.store(true, Ordering::SeqCst);
    let _ = writer.await;
    let stats = telemetry.finish(Duration::from_secs(5)).await;
    let outcome = outcome?;
    let new_version = crate::registry::NewVersion {
        run_id: run.id,
        dataset_id: run.dataset_id,
        model_name: &run.model_name,
        labels: &run.labels,
        auto_promote: run.auto_promote,
        promotion_gated: run.promotion_gate.is_some(),
        // A finetuned encoder is served from its base model's folder.
        embedding_model: match run.mode {
            TrainMode::Finetune => encoder_model.as_deref().unwrap_or(&dataset.embedding_model),
            TrainMode::Head => &dataset.embedding_model,
        },
        spec: json!(outcome.spec),
        weights: &outcome.weights,
        thresholds: &outcome.thresholds,
        validation: split_metrics_json(VALIDATION_SPLIT, outcome.validation.as_ref()),
        validation_macro_f1: outcome.validation.as_ref().map(|m| m.macro_f1),
        test: split_metrics_json(TEST_SPLIT, outcome.test.as_ref()),
        best_epoch: outcome.best_epoch,
        best_metric: outcome.best_metric,
        device: &outcome.device,
        telemetry: json!(stats),
        label_coverage: json!(label_coverage),
    };
    let version = crate::registry::register_version(pool, &new_version)
        .await
        .map_err(|e| TrainingError::Transient(format!("registering the model: {e}")))?;
    let gate_evaluation = promotion_gate(state, &run, version).await?;
    let test_macro_f1 = outcome.test.as_ref().map(|m| m.macro_f1);
    tracing::info!(run = %run.id, model = %run.model_name, version, test_macro_f1 = ?test_macro_f1, "training finished");
    let mut result = json!({
        "run_id": run.id,
        "model": run.model_name,
        "model_version": version,
        "best_epoch": outcome.best_epoch,
        "test_macro_f1": test_macro_f1,
        "telemetry": stats,
        "gate_evaluation_id": gate_evaluation,
    });
    if outcome.test.is_none() {
        result[TEST_SPLIT] = json!(EMPTY_SPLIT);
    }
    if outcome.validation.is_none() {
        result[VALIDATION_SPLIT] = json!(EMPTY_SPLIT);
    }
    Ok(result)
}

/// A gated `auto_promote`: asks for the evaluation that decides (when another version is
/// served; with nothing served the registry has already promoted).
async fn promotion_gate(
    state: &WorkerState,
    run: &RunSettings,
    version: i32,
) -> Result<Option<Uuid>, TrainingError> {
    match (&run.promotion_gate, run.auto_promote) {
        (Some(gate), true) => Ok(crate::scoring::evaluation::ensure_gate_evaluation(
            state,
            run.id,
            &run.model_name,
            version,
            gate,
        )
        .await?),
        _ => Ok(None),
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

/// The `train` kind's registration: cancelling a run's job before it started cancels the run;
/// retrying it resumes the run from its last checkpoint.
pub struct TrainJob;

impl crate::job_kind::RegisteredKind for TrainJob {
    const KIND: trainyard_jobs::JobKind = trainyard_jobs::JobKind::Train;
    type Args = TrainArgs;

    fn handle(
        state: &WorkerState,
        ctx: &JobContext,
        args: TrainArgs,
    ) -> impl std::future::Future<Output = Result<serde_json::Value, JobError>> + Send {
        handle_train(state, ctx, args)
    }

    async fn cancelled(
        pool: &PgPool,
        job: &crate::queue::JobView,
    ) -> Result<(), crate::job_kind::LifecycleError> {
        super::runs::job_cancelled(pool, &job.id).await?;
        Ok(())
    }

    async fn retrying(
        conn: &mut sqlx::PgConnection,
        job: &crate::queue::JobView,
    ) -> Result<(), crate::job_kind::LifecycleError> {
        super::runs::job_retrying(conn, &job.id).await?;
        Ok(())
    }
}
