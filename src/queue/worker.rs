//! The worker process: one apalis worker per queue, bounded concurrency, LISTEN/NOTIFY wake-up
//! plus polling, heartbeats, graceful shutdown on SIGINT/SIGTERM.
//!
//! Each process gets a unique name (host, pid, random suffix) so that a restarted worker never
//! inherits a dead one's identity; apalis hands a dead worker's jobs to others after
//! `heartbeat_secs × missed_heartbeats`.
use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::*;
use apalis_postgres::{Config as PgConfig, PostgresStorage};
use futures::future::{BoxFuture, FutureExt};
use sqlx::PgPool;
use trainyard_jobs::{DatasetBuildArgs, EmbedArgs, JobKind, TrainArgs};

use crate::config::Settings;
use crate::embedding::Embedders;

/// What every job handler can reach.
#[derive(Clone)]
pub struct WorkerState {
    pub pool: PgPool,
    pub settings: Arc<Settings>,
    pub embedders: Embedders,
}

/// How a job failed: retried later with backoff, or never again.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    Retryable(String),
    #[error("{0}")]
    Fatal(String),
    #[error("cancelled")]
    Cancelled,
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        // A lost connection or a restarted Postgres: try again later.
        JobError::Retryable(format!("database: {e}"))
    }
}

impl From<super::QueueError> for JobError {
    fn from(e: super::QueueError) -> Self {
        JobError::Retryable(e.to_string())
    }
}

fn into_apalis(
    result: Result<serde_json::Value, JobError>,
) -> Result<serde_json::Value, BoxDynError> {
    match result {
        Ok(value) => Ok(value),
        Err(JobError::Retryable(message)) => Err(message.into()),
        Err(JobError::Fatal(message)) => Err(Box::new(AbortError::new(message))),
        Err(JobError::Cancelled) => Err(Box::new(AbortError::new("cancelled"))),
    }
}

async fn handle_dataset_build(
    args: DatasetBuildArgs,
    id: TaskId,
    state: Data<WorkerState>,
) -> Result<serde_json::Value, BoxDynError> {
    let job_id = id.to_string();
    let state: WorkerState = (*state).clone();
    // Boxed as `Send + 'static` so the borrows inside never meet apalis's generic bounds.
    let run: BoxFuture<'static, Result<serde_json::Value, JobError>> = async move {
        tracing::info!(job = %job_id, dataset = %args.dataset_id, "dataset_build started");
        let result = crate::datasets::build::run_build(&state, &job_id, &args).await;
        if let Err(e) = &result {
            tracing::warn!(job = %job_id, error = %e, "dataset_build failed");
            fail_dataset_if_final(&state, &job_id, args.dataset_id, e).await;
        }
        result
    }
    .boxed();
    into_apalis(run.await)
}

async fn handle_embed(
    args: EmbedArgs,
    id: TaskId,
    state: Data<WorkerState>,
) -> Result<serde_json::Value, BoxDynError> {
    let job_id = id.to_string();
    let state: WorkerState = (*state).clone();
    let run: BoxFuture<'static, Result<serde_json::Value, JobError>> = async move {
        let result = crate::datasets::embed_job::run_embed(&state, &job_id, &args).await;
        if let Err(e) = &result {
            tracing::warn!(job = %job_id, dataset = %args.dataset_id, batch = args.batch_no, error = %e, "embed failed");
            fail_dataset_if_final(&state, &job_id, args.dataset_id, e).await;
        }
        result
    }
    .boxed();
    into_apalis(run.await)
}

async fn handle_train(
    args: TrainArgs,
    id: TaskId,
    state: Data<WorkerState>,
) -> Result<serde_json::Value, BoxDynError> {
    let job_id = id.to_string();
    let state: WorkerState = (*state).clone();
    let run: BoxFuture<'static, Result<serde_json::Value, JobError>> = async move {
        tracing::info!(job = %job_id, run = %args.run_id, "train started");
        let result = crate::training::run::run_training(&state, &job_id, &args).await;
        if let Err(e) = &result {
            tracing::warn!(job = %job_id, run = %args.run_id, error = %e, "train failed");
            let last = is_last_attempt(&state, &job_id, e).await;
            crate::training::run::record_failure(&state.pool, args.run_id, e, last).await;
        }
        result
    }
    .boxed();
    into_apalis(run.await)
}

/// Whether this failure ends the job: fatal, cancelled, or its last attempt.
pub async fn is_last_attempt(state: &WorkerState, job_id: &str, error: &JobError) -> bool {
    match error {
        JobError::Cancelled | JobError::Fatal(_) => true,
        JobError::Retryable(_) => {
            // apalis.jobs.attempts counts the attempts before this one.
            let row: Result<Option<(i32, i32)>, _> =
                sqlx::query_as("SELECT attempts, max_attempts FROM apalis.jobs WHERE id = $1")
                    .bind(job_id)
                    .fetch_optional(&state.pool)
                    .await;
            matches!(row, Ok(Some((attempts, max))) if attempts + 1 >= max)
        }
    }
}

/// When this was the job's last attempt (or the error is fatal), the dataset fails with it.
async fn fail_dataset_if_final(
    state: &WorkerState,
    job_id: &str,
    dataset_id: uuid::Uuid,
    error: &JobError,
) {
    if matches!(error, JobError::Cancelled) {
        return;
    }
    let last_attempt = is_last_attempt(state, job_id, error).await;
    if last_attempt {
        let message = format!("job {job_id} failed: {error}");
        let update = sqlx::query(
            "UPDATE datasets SET status = 'failed', error = $2, updated_at = now()
             WHERE id = $1 AND status NOT IN ('ready', 'cancelled')",
        )
        .bind(dataset_id)
        .bind(&message)
        .execute(&state.pool)
        .await;
        if let Err(e) = update {
            tracing::error!(dataset = %dataset_id, "could not mark dataset failed: {e}");
        }
    }
}

/// Options of one worker process.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub queues: Vec<JobKind>,
    pub concurrency: usize,
    /// Jobs claimed per fetch; defaults to `concurrency` so that one worker does not hoard
    /// the fan-out of a build while others sit idle.
    pub fetch_batch: Option<usize>,
    pub name_prefix: Option<String>,
}

/// A unique name for this process: host, pid and a random suffix.
pub fn unique_worker_name(prefix: Option<&str>) -> String {
    let host = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "host".into());
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    match prefix {
        Some(p) => format!("{p}-{host}-{}-{suffix}", std::process::id()),
        None => format!("{host}-{}-{suffix}", std::process::id()),
    }
}

fn pg_config(settings: &Settings, kind: JobKind, fetch_batch: usize) -> PgConfig {
    PgConfig::default()
        .queue(kind.queue())
        .batch_size(fetch_batch)
        .heartbeat_interval(Duration::from_secs(settings.queue.heartbeat_secs))
        .missed_heartbeats(settings.queue.missed_heartbeats)
}

/// Records the retry policy the backoff trigger reads.
pub async fn publish_retry_policy(pool: &PgPool, settings: &Settings) -> Result<(), sqlx::Error> {
    for kind in JobKind::ALL {
        sqlx::query(
            "INSERT INTO queue_policy (queue, base_secs, max_secs) VALUES ($1, $2, $3)
             ON CONFLICT (queue) DO UPDATE SET base_secs = EXCLUDED.base_secs, max_secs = EXCLUDED.max_secs",
        )
        .bind(kind.queue())
        .bind(settings.queue.retry_base_secs)
        .bind(settings.queue.retry_max_secs)
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// Runs until `shutdown` resolves, then lets running jobs finish (up to 30 s).
pub async fn run_workers(
    state: WorkerState,
    options: WorkerOptions,
    shutdown: impl std::future::Future<Output = std::io::Result<()>> + Send + 'static,
) -> anyhow::Result<()> {
    publish_retry_policy(&state.pool, &state.settings).await?;
    let name = unique_worker_name(options.name_prefix.as_deref());
    let concurrency = options.concurrency.max(1);
    let fetch_batch = options.fetch_batch.unwrap_or(concurrency).max(1);
    let poll = Duration::from_millis(state.settings.queue.poll_interval_ms);
    tracing::info!(worker = %name, queues = ?options.queues, concurrency, fetch_batch, "worker starting");
    // A worker whose backend fails (Postgres restarted, network cut) is restarted under a new
    // name after a short, growing pause, so a database restart never needs a worker restart.
    let pool = state.pool.clone();
    let mut monitor = Monitor::new().shutdown_timeout(Duration::from_secs(30)).should_restart(move |worker, error| {
        if pool.is_closed() {
            // The process is closing its pool: nothing to restart for.
            return false;
        }
        let pause = Duration::from_millis(500 * (worker.restarts() as u64 + 1).min(10));
        tracing::warn!(worker = %worker.name(), restarts = worker.restarts(), ?pause, "worker stopped on error, restarting: {error}");
        // The callback is synchronous; a blocking pause here only delays this restart.
        std::thread::sleep(pause);
        true
    });
    for kind in options.queues.iter().copied() {
        let state = state.clone();
        let worker_name = format!("{name}-{}", kind.queue());
        let config = pg_config(&state.settings, kind, fetch_batch);
        monitor = match kind {
            JobKind::DatasetBuild => monitor.register(move |run| {
                let backend = PostgresStorage::<DatasetBuildArgs>::new(&state.pool)
                    .with_config(config.clone())
                    .with_pubsub()
                    .poll_with_interval(poll);
                WorkerBuilder::new(format!("{worker_name}-{run}"))
                    .backend(backend)
                    .data(state.clone())
                    .concurrency(concurrency)
                    .parallelize(tokio::spawn)
                    .build(handle_dataset_build)
            }),
            JobKind::Train => monitor.register(move |run| {
                let backend = PostgresStorage::<TrainArgs>::new(&state.pool)
                    .with_config(config.clone())
                    .with_pubsub()
                    .poll_with_interval(poll);
                WorkerBuilder::new(format!("{worker_name}-{run}"))
                    .backend(backend)
                    .data(state.clone())
                    .concurrency(concurrency)
                    .parallelize(tokio::spawn)
                    .build(handle_train)
            }),
            JobKind::Embed => monitor.register(move |run| {
                let backend = PostgresStorage::<EmbedArgs>::new(&state.pool)
                    .with_config(config.clone())
                    .with_pubsub()
                    .poll_with_interval(poll);
                WorkerBuilder::new(format!("{worker_name}-{run}"))
                    .backend(backend)
                    .data(state.clone())
                    .concurrency(concurrency)
                    .parallelize(tokio::spawn)
                    .build(handle_embed)
            }),
        };
    }
    monitor.run_with_signal(shutdown).await?;
    tracing::info!(worker = %name, "worker stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}
