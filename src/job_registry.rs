//! The one registry of job kinds: binds each kind (a stable string, see `trainyard-jobs`) to
//! its handler in its domain module. The queue runs handlers without knowing what they do;
//! the handlers know nothing of the queue but their context and typed error.
use std::sync::Arc;

use futures::FutureExt;
use serde::de::DeserializeOwned;
use trainyard_jobs::JobKind;

use crate::queue::worker::{JobHandler, JobHandlers};
use crate::queue::{JobContext, JobError};
use crate::worker_state::WorkerState;

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
