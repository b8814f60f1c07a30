//! The datasets domain's error type for its jobs, and the one place it becomes a job's error.
//!
//! The `dataset_build` and `embed` jobs (`build.rs`, `embed_job.rs`) fail with a
//! [`DatasetError`]. What matters to a job is whether trying again can help:
//! its `Failure` implementation (`outcome`) says so, and the `From<DatasetError> for JobError` below turns
//! that into [`JobError::Retryable`] or [`JobError::Fatal`], here and nowhere else. The message
//! a job records is the error's own: `database: ...` for a statement, the provider's message for
//! an embedding failure, the text given for the others.
//!
//! The store functions that the API and the job registry's lifecycle hooks call (`store.rs`,
//! `documents.rs`, `export.rs`) keep answering with the database and queue errors they wrap.
use crate::embedding::EmbedError;
use crate::queue::job::{Failure, Outcome};
use crate::queue::{JobError, QueueError};

/// How a dataset job failed.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// A statement failed. Transient trouble (a lost connection, an exhausted pool, I/O, a
    /// restarting server, a deadlock) is retried; a bug or bad data (a value that does not
    /// decode, no row where one must exist, a violated constraint) is not.
    #[error("database: {0}")]
    Database(sqlx::Error),
    /// Enqueueing the build's embed jobs failed for a reason other than the database's (whose
    /// errors are [`DatasetError::Database`]).
    #[error(transparent)]
    Queue(QueueError),
    /// The embedding model is unknown, or its provider failed: retried when the provider says
    /// trying again may help ([`EmbedError::Retryable`]), else fatal.
    #[error(transparent)]
    Embed(EmbedError),
    /// Data the job cannot go on with: a dataset or batch that vanished, a stored request that
    /// does not read, a selection with nothing to build, vectors that do not fit the texts. The
    /// same on every attempt: never retried.
    #[error("{0}")]
    Invalid(String),
    /// Trouble outside the database that may pass (reading an external source): retried.
    #[error("{0}")]
    Transient(String),
    /// The job (or its dataset) was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// The worker is shutting down: the job goes back to its queue as it was.
    #[error("interrupted: the worker is shutting down")]
    Interrupted,
}

impl From<sqlx::Error> for DatasetError {
    fn from(e: sqlx::Error) -> Self {
        DatasetError::Database(e)
    }
}

impl From<QueueError> for DatasetError {
    fn from(e: QueueError) -> Self {
        match e {
            // Shown the same ("database: ..."), and classified with every other statement's.
            QueueError::Database(db) => DatasetError::Database(db),
            other => DatasetError::Queue(other),
        }
    }
}

impl From<EmbedError> for DatasetError {
    fn from(e: EmbedError) -> Self {
        DatasetError::Embed(e)
    }
}

/// What a dataset job's failure means to the queue; the message is the error's own
/// (`database: ...` for a statement, as before).
impl Failure for DatasetError {
    fn outcome(&self) -> Outcome {
        match self {
            DatasetError::Database(e) => Outcome::of_database(e),
            DatasetError::Queue(e) => Outcome::of_queue(e),
            DatasetError::Embed(e) if e.is_retryable() => Outcome::Retry,
            DatasetError::Transient(_) => Outcome::Retry,
            DatasetError::Embed(_) | DatasetError::Invalid(_) => Outcome::Fail,
            DatasetError::Cancelled => Outcome::Cancelled,
            DatasetError::Interrupted => Outcome::Interrupted,
        }
    }
}

impl From<DatasetError> for JobError {
    fn from(e: DatasetError) -> Self {
        JobError::from_failure(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_error(e: DatasetError) -> JobError {
        e.into()
    }

    #[test]
    fn statements_and_queue_errors_read_and_retry_as_the_queue_maps_them() {
        let statements = || {
            [
                sqlx::Error::PoolTimedOut,
                sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
                sqlx::Error::RowNotFound,
                sqlx::Error::Decode("not a uuid".into()),
            ]
        };
        for (mine, queue) in statements().into_iter().zip(statements()) {
            let theirs = JobError::from(queue);
            let ours = job_error(DatasetError::from(mine));
            assert_eq!(format!("{ours:?}"), format!("{theirs:?}"));
        }
        for (mine, queue) in statements().into_iter().zip(statements()) {
            let theirs = JobError::from(QueueError::Database(queue));
            let ours = job_error(DatasetError::from(QueueError::Database(mine)));
            assert_eq!(format!("{ours:?}"), format!("{theirs:?}"));
        }
    }

    #[test]
    fn embedding_failures_keep_the_providers_classification_and_message() {
        assert!(matches!(
            job_error(EmbedError::Retryable("429 too many requests".into()).into()),
            JobError::Retryable(m) if m == "429 too many requests"
        ));
        assert!(matches!(
            job_error(EmbedError::Fatal("400 bad request".into()).into()),
            JobError::Fatal(m) if m == "400 bad request"
        ));
        assert!(matches!(
            job_error(EmbedError::UnknownModel("nope".into()).into()),
            JobError::Fatal(m) if m == "unknown embedding model `nope`"
        ));
    }

    #[test]
    fn the_other_kinds_keep_their_meaning() {
        assert!(matches!(
            job_error(DatasetError::Cancelled),
            JobError::Cancelled
        ));
        assert!(matches!(
            job_error(DatasetError::Interrupted),
            JobError::Interrupted
        ));
        let id = uuid::Uuid::nil();
        assert!(matches!(
            job_error(DatasetError::Invalid(format!("dataset {id} no longer exists"))),
            JobError::Fatal(m) if m == format!("dataset {id} no longer exists")
        ));
        assert!(matches!(
            job_error(DatasetError::Transient("reading external source crm: timed out".into())),
            JobError::Retryable(m) if m == "reading external source crm: timed out"
        ));
        assert!(matches!(
            job_error(DatasetError::Queue(QueueError::Apalis("lost".into()))),
            JobError::Retryable(m) if m == "queue: lost"
        ));
        let json = serde_json::from_str::<u8>("x").unwrap_err();
        assert!(matches!(
            job_error(DatasetError::from(QueueError::Serialization(json))),
            JobError::Fatal(m) if m.starts_with("job arguments: ")
        ));
    }
}
