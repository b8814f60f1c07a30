//! What a job kind implements to be registered (`job_registry` lists the implementations):
//! its arguments, its handler, and its `cancelled` / `retrying` / `retried` hooks. Domain
//! modules depend on this contract, the registry on them: job plumbing flows one way,
//! `job_registry` → domain handlers → `job_kind` → `queue`.
use std::future::Future;

use serde::de::DeserializeOwned;
use sqlx::{PgConnection, PgPool};
use trainyard_jobs::JobKind;

use crate::queue::{JobContext, JobError, JobView, QueueError};
use crate::worker_state::WorkerState;

/// One job kind: implemented once, in the domain module that owns the kind, on a unit struct
/// named after it (`datasets::build::DatasetBuildJob`, …).
pub trait RegisteredKind: Send + Sync + 'static {
    const KIND: JobKind;
    /// The job's stored arguments (`trainyard_jobs::*Args`).
    type Args: DeserializeOwned + Send + 'static;

    /// Runs one attempt of a job; its result is stored as the job's result.
    fn handle(
        state: &WorkerState,
        ctx: &JobContext,
        args: Self::Args,
    ) -> impl Future<Output = Result<serde_json::Value, JobError>> + Send;

    /// After the queue cancelled one of its jobs: what the job works for follows.
    fn cancelled(
        _pool: &PgPool,
        _job: &JobView,
    ) -> impl Future<Output = Result<(), LifecycleError>> + Send {
        async { Ok(()) }
    }

    /// In a retry's transaction, before the job is put back in its queue: what the job works
    /// for goes back to unfinished, or the retry is refused ([`LifecycleError::Conflict`]).
    fn retrying(
        _conn: &mut PgConnection,
        _job: &JobView,
    ) -> impl Future<Output = Result<(), LifecycleError>> + Send {
        async { Ok(()) }
    }

    /// In the same transaction, after the job was put back in its queue.
    fn retried(
        _conn: &mut PgConnection,
        _job: &JobView,
    ) -> impl Future<Output = Result<(), LifecycleError>> + Send {
        async { Ok(()) }
    }
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
