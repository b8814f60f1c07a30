//! The one registry of job kinds: binds each kind (a stable string, see `trainyard-jobs`) to
//! its handler in its domain module, and cancelling or retrying a job to what that does to the
//! run, dataset, scoring job or evaluation it works for. The queue runs handlers without
//! knowing what they do; the handlers know nothing of the queue but their context and typed
//! error.
use std::sync::Arc;

use futures::FutureExt;
use serde::de::DeserializeOwned;
use sqlx::PgPool;
use trainyard_jobs::JobKind;

use crate::queue::worker::{JobHandler, JobHandlers};
use crate::queue::{self, JobContext, JobError, JobView, QueueError};
use crate::worker_state::WorkerState;
use crate::{datasets, scoring, training};

/// Decodes a job's stored arguments; arguments that do not parse can never succeed.
fn decode<A: DeserializeOwned>(kind: JobKind, args: serde_json::Value) -> Result<A, JobError> {
    serde_json::from_value(args)
        .map_err(|e| JobError::Fatal(format!("{} job arguments unreadable: {e}", kind.queue())))
}

/// The handler of one kind, bound to this process's services.
pub fn handler(kind: JobKind, state: WorkerState) -> JobHandler {
    match kind {
        JobKind::DatasetBuild => Arc::new(move |ctx: JobContext, args| {
            let state = state.clone();
            async move {
                let args = decode(ctx.kind, args)?;
                crate::datasets::build::handle_build(&state, &ctx, args).await
            }
            .boxed()
        }),
        JobKind::Embed => Arc::new(move |ctx: JobContext, args| {
            let state = state.clone();
            async move {
                let args = decode(ctx.kind, args)?;
                crate::datasets::embed_job::handle_embed(&state, &ctx, args).await
            }
            .boxed()
        }),
        JobKind::Train => Arc::new(move |ctx: JobContext, args| {
            let state = state.clone();
            async move {
                let args = decode(ctx.kind, args)?;
                crate::training::run::handle_train(&state, &ctx, args).await
            }
            .boxed()
        }),
        JobKind::Score => Arc::new(move |ctx: JobContext, args| {
            let state = state.clone();
            async move {
                let args = decode(ctx.kind, args)?;
                crate::scoring::plan::handle_score(&state, &ctx, args).await
            }
            .boxed()
        }),
        JobKind::Evaluate => Arc::new(move |ctx: JobContext, args| {
            let state = state.clone();
            async move {
                let args = decode(ctx.kind, args)?;
                crate::scoring::evaluation::handle_evaluate(&state, &ctx, args).await
            }
            .boxed()
        }),
        JobKind::ReviewRank => Arc::new(move |ctx: JobContext, args| {
            let state = state.clone();
            async move {
                let args = decode(ctx.kind, args)?;
                crate::review::job::handle_review_rank(&state, &ctx, args).await
            }
            .boxed()
        }),
    }
}

/// Every kind's handler.
pub fn all_handlers(state: &WorkerState) -> JobHandlers {
    JobKind::ALL
        .into_iter()
        .map(|kind| (kind, handler(kind, state.clone())))
        .collect()
}

/// Runs a worker process (or an in-process worker) on `options.queues` until `shutdown`.
pub async fn run_workers(
    state: WorkerState,
    options: crate::queue::worker::WorkerOptions,
    shutdown: impl std::future::Future<Output = std::io::Result<()>> + Send + 'static,
) -> anyhow::Result<()> {
    let handlers = all_handlers(&state);
    crate::queue::worker::run_workers(
        state.pool.clone(),
        state.settings.queue.clone(),
        handlers,
        options,
        shutdown,
    )
    .await
}

/// Why a job was not cancelled or retried.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// What the job works for is in a state that forbids it.
    #[error("{0}")]
    Conflict(String),
}

impl From<sqlx::Error> for LifecycleError {
    fn from(e: sqlx::Error) -> Self {
        LifecycleError::Queue(QueueError::Database(e))
    }
}

/// Cancels a job: a queued one never runs; a running one stops at its next checkpoint. What it
/// works for follows: a run not yet started is cancelled, a scoring job (and its evaluation)
/// is cancelled whole, an evaluation with its `evaluate` job, a dataset with its build and
/// every job of it. Returns the job as it is now.
pub async fn cancel(pool: &PgPool, job_id: &str) -> Result<JobView, LifecycleError> {
    let job = queue::cancel_job(pool, job_id).await?;
    let kind = JobKind::from_queue(&job.kind);
    if kind == Some(JobKind::Train) {
        training::runs::job_cancelled(pool, &job.id).await?;
    }
    if let Some(scoring_job) = job.scoring_job_id {
        // A scoring job missing one chunk can never finish: cancelling any of its jobs
        // cancels it whole (and the evaluation it belongs to).
        scoring::store::cancel(pool, scoring_job).await?;
    }
    match (kind, job.dataset_id) {
        (Some(JobKind::Evaluate), _) => {
            scoring::evaluation::evaluate_job_cancelled(pool, &job.id).await?
        }
        (Some(JobKind::DatasetBuild), Some(dataset)) => {
            datasets::store::build_cancelled(pool, dataset).await?
        }
        _ => {}
    }
    Ok(queue::get_job(pool, job_id).await?)
}

/// Puts a failed or cancelled job back in its queue with a fresh attempt budget, and what it
/// works for back to unfinished, in one transaction: a run resumes from its last checkpoint, a
/// dataset builds or embeds again, a failed scoring job or evaluation runs again (a cancelled
/// one is not resumed: [`LifecycleError::Conflict`]). Returns the job as it is now.
pub async fn retry(pool: &PgPool, job_id: &str) -> Result<JobView, LifecycleError> {
    let job = queue::get_job(pool, job_id).await?;
    let mut tx = pool.begin().await?;
    let kind = JobKind::from_queue(&job.kind);
    // The scoring job whose other failed jobs run again with this one.
    let scoring_job = match (kind, job.dataset_id, job.scoring_job_id) {
        (Some(JobKind::Train), _, _) => {
            training::runs::job_retrying(&mut tx, &job.id).await?;
            None
        }
        (Some(JobKind::DatasetBuild), Some(dataset), _) => {
            datasets::store::build_retrying(&mut tx, dataset).await?;
            None
        }
        (_, Some(dataset), _) => {
            datasets::store::job_retrying(&mut tx, dataset).await?;
            None
        }
        (_, None, Some(scoring_job)) => {
            scoring::store::job_retrying(&mut tx, scoring_job).await?;
            Some(scoring_job)
        }
        (Some(JobKind::Evaluate), None, None) => {
            scoring::evaluation::evaluate_job_retrying(&mut tx, &job.id).await?;
            None
        }
        _ => None,
    };
    queue::retry_job(&mut tx, &job).await?;
    if let Some(scoring_job) = scoring_job {
        scoring::store::retry_failed_jobs(&mut tx, scoring_job).await?;
    }
    tx.commit().await?;
    Ok(queue::get_job(pool, job_id).await?)
}
