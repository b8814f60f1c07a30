//! The scoring domain's one error type, and the one place it becomes a job's error.
//!
//! Every function of `scoring` (scoring jobs, their plan and chunks, evaluations and their
//! gate) fails with a [`ScoringError`], but for the export's page reader and encoder, which
//! answer to `streamed_export` as the dataset export does. What matters to a job is whether
//! trying again can help: its `Failure` implementation (`outcome`) says so, and the
//! `From<ScoringError> for JobError` below turns that into [`JobError::Retryable`] or
//! [`JobError::Fatal`], here and nowhere else. The API answers a `ScoringError` as it answered
//! the database and queue errors it wraps (see `api::errors`), and the job registry's lifecycle
//! calls get the [`LifecycleError`] they got before (below).
use crate::job_kind::LifecycleError;
use crate::queue::job::{Failure, Outcome};
use crate::queue::{JobError, QueueError};

/// How scoring work failed.
#[derive(Debug, thiserror::Error)]
pub enum ScoringError {
    /// A statement failed. Transient trouble (a lost connection, an exhausted pool, I/O, a
    /// restarting server, a deadlock) is retried; a bug or bad data (a value that does not
    /// decode, no row where one must exist, a violated constraint) is not.
    #[error("database: {0}")]
    Database(sqlx::Error),
    /// Enqueueing or cancelling queued jobs failed for a reason other than the database's
    /// (whose errors are [`ScoringError::Database`]).
    #[error(transparent)]
    Queue(QueueError),
    /// What the scoring job or evaluation is in forbids the action (retrying a cancelled one).
    #[error("{0}")]
    Conflict(String),
    /// Data the work cannot go on with: a row that vanished, a stored value that does not
    /// read, a version that cannot load, scores that do not fit the records. The same on every
    /// attempt: never retried.
    #[error("{0}")]
    Invalid(String),
    /// Trouble outside the database that may pass (the model's runtime, the registry while
    /// promoting): retried.
    #[error("{0}")]
    Transient(String),
    /// The job was asked to stop.
    #[error("cancelled")]
    Cancelled,
    /// The worker is shutting down: the job goes back to its queue as it was.
    #[error("interrupted: the worker is shutting down")]
    Interrupted,
}

impl From<sqlx::Error> for ScoringError {
    fn from(e: sqlx::Error) -> Self {
        ScoringError::Database(e)
    }
}

impl From<QueueError> for ScoringError {
    fn from(e: QueueError) -> Self {
        match e {
            // Shown the same ("database: ..."), and classified with every other statement's.
            QueueError::Database(db) => ScoringError::Database(db),
            other => ScoringError::Queue(other),
        }
    }
}

/// What a scoring failure means to the queue; the message is the error's own (`database: ...`
/// for a statement, as before).
impl Failure for ScoringError {
    fn outcome(&self) -> Outcome {
        match self {
            ScoringError::Database(e) => Outcome::of_database(e),
            ScoringError::Queue(e) => Outcome::of_queue(e),
            ScoringError::Transient(_) => Outcome::Retry,
            ScoringError::Conflict(_) | ScoringError::Invalid(_) => Outcome::Fail,
            ScoringError::Cancelled => Outcome::Cancelled,
            ScoringError::Interrupted => Outcome::Interrupted,
        }
    }
}

impl From<ScoringError> for JobError {
    fn from(e: ScoringError) -> Self {
        JobError::from_failure(e)
    }
}

/// What the registry's cancel and retry calls see: the queue and database errors as they were,
/// a conflict as a conflict. The other kinds come from running jobs, never from those calls;
/// should one reach them it is answered as a server fault.
impl From<ScoringError> for LifecycleError {
    fn from(e: ScoringError) -> Self {
        match e {
            ScoringError::Database(db) => LifecycleError::Queue(QueueError::Database(db)),
            ScoringError::Queue(q) => LifecycleError::Queue(q),
            ScoringError::Conflict(message) => LifecycleError::Conflict(message),
            other => LifecycleError::Queue(QueueError::Apalis(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_error(e: ScoringError) -> JobError {
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
        // A database error inside a queue error is the same database error.
        let e = ScoringError::from(QueueError::Database(sqlx::Error::PoolTimedOut));
        assert!(matches!(
            e,
            ScoringError::Database(sqlx::Error::PoolTimedOut)
        ));
        assert_eq!(e.outcome(), Outcome::Retry);
    }

    #[test]
    fn bugs_and_bad_data_are_fatal() {
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
        for code in ["23505", "23503", "23502", "23514", "22003", "22P02"] {
            assert!(crate::db::is_bad_data_sqlstate(code), "{code}");
        }
        // Connection faults, deadlocks, serialization failures and timeouts are worth a retry.
        for code in [
            "08006", "57P01", "53300", "40001", "40P01", "55P03", "57014",
        ] {
            assert!(!crate::db::is_bad_data_sqlstate(code), "{code}");
        }
    }

    #[test]
    fn the_other_kinds_keep_their_meaning() {
        assert!(matches!(
            job_error(ScoringError::Cancelled),
            JobError::Cancelled
        ));
        assert!(matches!(
            job_error(ScoringError::Interrupted),
            JobError::Interrupted
        ));
        assert!(matches!(
            job_error(ScoringError::Invalid("no such chunk".into())),
            JobError::Fatal(m) if m == "no such chunk"
        ));
        assert!(matches!(
            job_error(ScoringError::Transient("model runtime".into())),
            JobError::Retryable(m) if m == "model runtime"
        ));
        assert!(matches!(
            job_error(ScoringError::Queue(QueueError::Apalis("lost".into()))),
            JobError::Retryable(m) if m == "queue: lost"
        ));
        let json = serde_json::from_str::<u8>("x").unwrap_err();
        assert!(matches!(
            job_error(ScoringError::Queue(QueueError::Serialization(json))),
            JobError::Fatal(m) if m.starts_with("job arguments: ")
        ));
        assert!(matches!(
            LifecycleError::from(ScoringError::Conflict("its evaluation is cancelled".into())),
            LifecycleError::Conflict(m) if m == "its evaluation is cancelled"
        ));
        assert!(matches!(
            LifecycleError::from(ScoringError::Database(sqlx::Error::PoolTimedOut)),
            LifecycleError::Queue(QueueError::Database(sqlx::Error::PoolTimedOut))
        ));
    }
}
