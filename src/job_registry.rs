//! The one registry of job kinds. Each kind is registered once, next to its handler in its
//! domain module, by implementing [`RegisteredKind`] (`crate::job_kind`): its argument type,
//! its handler, and what cancelling or retrying one of its jobs does to the run, dataset,
//! scoring job or evaluation it works for. [`registration`] lists every kind in one exhaustive
//! match, so a new `JobKind` does not compile until it is registered; the API's kind list is
//! `JobKind::ALL`. The queue runs handlers without knowing what they do; the handlers know
//! nothing of the queue but their context and typed error.
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::de::DeserializeOwned;
use sqlx::{PgConnection, PgPool};
use trainyard_jobs::JobKind;

use crate::job_kind::LifecycleError;
use crate::job_kind::RegisteredKind;
use crate::queue::worker::{JobHandler, JobHandlers};
use crate::queue::{self, JobContext, JobError, JobView};
use crate::worker_state::WorkerState;
use crate::{datasets, review, scoring, training};

/// A kind's registration with its types erased, so the registry can hold every kind.
#[derive(Clone, Copy)]
pub struct Registration {
    pub kind: JobKind,
    handler: fn(WorkerState) -> JobHandler,
    cancelled: for<'a> fn(&'a PgPool, &'a JobView) -> BoxFuture<'a, Result<(), LifecycleError>>,
    retrying:
        for<'a> fn(&'a mut PgConnection, &'a JobView) -> BoxFuture<'a, Result<(), LifecycleError>>,
    retried:
        for<'a> fn(&'a mut PgConnection, &'a JobView) -> BoxFuture<'a, Result<(), LifecycleError>>,
}

/// Every kind's registration: the one list to extend when a kind is added.
pub fn registration(kind: JobKind) -> Registration {
    match kind {
        JobKind::DatasetBuild => register::<datasets::build::DatasetBuildJob>(),
        JobKind::Embed => register::<datasets::embed_job::EmbedJob>(),
        JobKind::Train => register::<training::run::TrainJob>(),
        JobKind::Score => register::<scoring::plan::ScoreJob>(),
        JobKind::Evaluate => register::<scoring::evaluation::EvaluateJob>(),
        JobKind::ReviewRank => register::<review::job::ReviewRankJob>(),
    }
}

fn register<K: RegisteredKind>() -> Registration {
    Registration {
        kind: K::KIND,
        handler: handler_of::<K>,
        cancelled: cancelled_of::<K>,
        retrying: retrying_of::<K>,
        retried: retried_of::<K>,
    }
}

fn handler_of<K: RegisteredKind>(state: WorkerState) -> JobHandler {
    Arc::new(move |ctx: JobContext, args| {
        let state = state.clone();
        async move {
            let args = decode::<K::Args>(ctx.kind, args)?;
            K::handle(&state, &ctx, args).await
        }
        .boxed()
    })
}

fn cancelled_of<'a, K: RegisteredKind>(
    pool: &'a PgPool,
    job: &'a JobView,
) -> BoxFuture<'a, Result<(), LifecycleError>> {
    K::cancelled(pool, job).boxed()
}

fn retrying_of<'a, K: RegisteredKind>(
    conn: &'a mut PgConnection,
    job: &'a JobView,
) -> BoxFuture<'a, Result<(), LifecycleError>> {
    K::retrying(conn, job).boxed()
}

fn retried_of<'a, K: RegisteredKind>(
    conn: &'a mut PgConnection,
    job: &'a JobView,
) -> BoxFuture<'a, Result<(), LifecycleError>> {
    K::retried(conn, job).boxed()
}

/// Decodes a job's stored arguments; arguments that do not parse can never succeed.
fn decode<A: DeserializeOwned>(kind: JobKind, args: serde_json::Value) -> Result<A, JobError> {
    serde_json::from_value(args)
        .map_err(|e| JobError::Fatal(format!("{} job arguments unreadable: {e}", kind.queue())))
}

/// The handler of one kind, bound to this process's services.
pub fn handler(kind: JobKind, state: WorkerState) -> JobHandler {
    (registration(kind).handler)(state)
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

/// Cancels a job: a queued one never runs; a running one stops at its next checkpoint. What it
/// works for follows: a run not yet started is cancelled, a scoring job (and its evaluation)
/// is cancelled whole, an evaluation with its `evaluate` job, a dataset with its build and
/// every job of it. Returns the job as it is now.
pub async fn cancel(pool: &PgPool, job_id: &str) -> Result<JobView, LifecycleError> {
    let job = queue::cancel_job(pool, job_id).await?;
    if let Some(kind) = JobKind::from_queue(&job.kind) {
        (registration(kind).cancelled)(pool, &job).await?;
    }
    Ok(queue::get_job(pool, job_id).await?)
}

/// Puts a failed or cancelled job back in its queue with a fresh attempt budget, and what it
/// works for back to unfinished, in one transaction: a run resumes from its last checkpoint, a
/// dataset builds or embeds again, a failed scoring job or evaluation runs again (a cancelled
/// one is not resumed: [`LifecycleError::Conflict`]). Returns the job as it is now.
pub async fn retry(pool: &PgPool, job_id: &str) -> Result<JobView, LifecycleError> {
    let job = queue::get_job(pool, job_id).await?;
    let registered = JobKind::from_queue(&job.kind).map(registration);
    let mut tx = pool.begin().await?;
    if let Some(registered) = registered {
        (registered.retrying)(&mut tx, &job).await?;
    }
    queue::retry_job(&mut tx, &job).await?;
    if let Some(registered) = registered {
        (registered.retried)(&mut tx, &job).await?;
    }
    tx.commit().await?;
    Ok(queue::get_job(pool, job_id).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_registered_as_itself() {
        for kind in JobKind::ALL {
            assert_eq!(registration(kind).kind, kind);
        }
    }
}
