//! The datasets domain's error type for its jobs, and the one place it becomes a job's error.
//!
//! The `dataset_build` and `embed` jobs (`build.rs`, `embed_job.rs`) fail with a
//! [`DatasetError`]. What matters to a job is whether trying again can help:
//! [`DatasetError::is_transient`] says so, and the `From<DatasetError> for JobError` below turns
//! that into [`JobError::Retryable`] or [`JobError::Fatal`], here and nowhere else. The message
//! a job records is the error's own: `database: ...` for a statement, the provider's message for
//! an embedding failure, the text given for the others.
//!
//! The store functions that the API and the job registry's lifecycle hooks call (`store.rs`,
//! `documents.rs`, `export.rs`) keep answering with the database and queue errors they wrap.
use crate::embedding::EmbedError;
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

impl DatasetError {
    /// Whether the same work may succeed when tried again later. Cancelled and interrupted
    /// work is neither: the queue is told so as such.
    pub fn is_transient(&self) -> bool {
        match self {
            DatasetError::Database(e) => !crate::db::is_permanent(e),
            // The same arguments fail the same way on every attempt.
            DatasetError::Queue(QueueError::Serialization(_)) => false,
            DatasetError::Queue(_) | DatasetError::Transient(_) => true,
            DatasetError::Embed(e) => e.is_retryable(),
            DatasetError::Invalid(_) | DatasetError::Cancelled | DatasetError::Interrupted => false,
        }
    }
}

/// The one mapping of dataset job failures to the queue's: retried while transient, else fatal.
/// The message is the error's own (`database: ...` for a statement, as before).
impl From<DatasetError> for JobError {
    fn from(e: DatasetError) -> Self {
        match e {
            DatasetError::Cancelled => JobError::Cancelled,
            DatasetError::Interrupted => JobError::Interrupted,
            e if e.is_transient() => JobError::Retryable(e.to_string()),
            e => JobError::Fatal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_error(e: DatasetError) -> JobError {
        e.into()
    }

    #[test]
    fn connection_trouble_is_retried_with_the_message_it_had() {
        for e in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::WorkerCrashed,
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        ] {
            let message = format!("database: {e}");
            match job_error(e.into()) {
                JobError::Retryable(m) => assert_eq!(m, message),
                other => panic!("expected a retry, got {other:?}"),
            }
        }
        // A database error inside a queue error is the same database error, with the message
        // the queue's own mapping gave it.
        let e = DatasetError::from(QueueError::Database(sqlx::Error::PoolTimedOut));
        assert!(matches!(
            e,
            DatasetError::Database(sqlx::Error::PoolTimedOut)
        ));
        assert!(e.is_transient());
        let before = JobError::from(QueueError::Database(sqlx::Error::PoolTimedOut));
        match (job_error(e), before) {
            (JobError::Retryable(now), JobError::Retryable(then)) => assert_eq!(now, then),
            other => panic!("expected two retries, got {other:?}"),
        }
    }

    #[test]
    fn bugs_and_bad_data_are_fatal_as_they_were() {
        for e in [
            sqlx::Error::RowNotFound,
            sqlx::Error::ColumnNotFound("status".into()),
            sqlx::Error::Decode("not a uuid".into()),
            sqlx::Error::ColumnIndexOutOfBounds { index: 3, len: 2 },
        ] {
            let message = format!("database: {e}");
            match job_error(e.into()) {
                JobError::Fatal(m) => assert_eq!(m, message),
                other => panic!("expected a fatal error, got {other:?}"),
            }
        }
        let e = DatasetError::from(QueueError::Database(sqlx::Error::RowNotFound));
        assert!(!e.is_transient());
        let before = JobError::from(QueueError::Database(sqlx::Error::RowNotFound));
        match (job_error(e), before) {
            (JobError::Fatal(now), JobError::Fatal(then)) => {
                assert!(now.starts_with("database: "));
                assert_eq!(now, then);
            }
            other => panic!("expected two fatal errors, got {other:?}"),
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
