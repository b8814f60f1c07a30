//! The training domain's one error type, and the one place it becomes a job's error.
//!
//! Every function of `training` that can fail for a reason worth telling (run rows and their
//! cancel, the `train` job's data, epochs and checkpoints, its promotion gate) fails with a
//! [`TrainingError`]; the telemetry webhook and the curves answer to no caller and keep their
//! own. What matters to a job is whether trying again can help: its `Failure` implementation (`outcome`)
//! says so, and the `From<TrainingError> for JobError` below turns that into
//! [`JobError::Retryable`] or [`JobError::Fatal`], here and nowhere else; the message a run
//! records is the error's own. The API answers a `TrainingError` as it answered the run, database
//! and queue errors it wraps (see `api::errors`), and the job registry's lifecycle calls get the
//! [`LifecycleError`] they got before (below).
use uuid::Uuid;

use crate::job_kind::LifecycleError;
use crate::ml::trainer::TrainError;
use crate::queue::job::{Failure, Outcome};
use crate::queue::{JobError, QueueError};
use crate::scoring::ScoringError;

/// How training work failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainingError {
    /// A statement failed. Transient trouble (a lost connection, an exhausted pool, I/O, a
    /// restarting server, a deadlock) is retried; a bug or bad data (a value that does not
    /// decode, no row where one must exist, a violated constraint) is not.
    #[error("database: {0}")]
    Database(sqlx::Error),
    /// Enqueueing or cancelling a run's job failed for a reason other than the database's
    /// (whose errors are [`TrainingError::Database`]).
    #[error(transparent)]
    Queue(QueueError),
    /// Asking for the promotion gate's evaluation failed: classified as scoring classifies it.
    #[error(transparent)]
    Scoring(ScoringError),
    /// No training run has this id.
    #[error("training run {0} not found")]
    NotFound(Uuid),
    /// The run is in a state that forbids what was asked (cancelling a finished run).
    #[error("{0}")]
    Conflict(String),
    /// The model could not be built, trained, evaluated or (de)serialized. Training is
    /// deterministic: the same inputs fail the same way, so never retried.
    #[error("{0}")]
    Model(String),
    /// Data or settings the work cannot go on with: a run or dataset that vanished or is not
    /// ready, a stored value that does not read, a base model that does not load, a split
    /// with nothing to train on. The same on every attempt: never retried.
    #[error("{0}")]
    Invalid(String),
    /// Trouble that may pass (the training thread, a temporary file, saving an epoch,
    /// registering the model): retried.
    #[error("{0}")]
    Transient(String),
    /// The run was asked to stop.
    #[error("cancelled")]
    Cancelled,
    /// The worker is shutting down: the job goes back to its queue as it was.
    #[error("interrupted: the worker is shutting down")]
    Interrupted,
}

impl From<sqlx::Error> for TrainingError {
    fn from(e: sqlx::Error) -> Self {
        TrainingError::Database(e)
    }
}

impl From<QueueError> for TrainingError {
    fn from(e: QueueError) -> Self {
        match e {
            // Shown the same ("database: ..."), and classified with every other statement's.
            QueueError::Database(db) => TrainingError::Database(db),
            other => TrainingError::Queue(other),
        }
    }
}

impl From<ScoringError> for TrainingError {
    fn from(e: ScoringError) -> Self {
        TrainingError::Scoring(e)
    }
}

/// A trainer stopped by its run's cancel flag is cancelled; any other failure of the model is
/// [`TrainingError::Model`], with the trainer's message.
impl From<TrainError> for TrainingError {
    fn from(e: TrainError) -> Self {
        match e {
            TrainError::Cancelled => TrainingError::Cancelled,
            TrainError::Failed(message) => TrainingError::Model(message),
        }
    }
}

/// What a training failure means to the queue; the message is the error's own (`database: ...`
/// for a statement, as before); a scoring failure is classified as scoring classifies it.
impl Failure for TrainingError {
    fn outcome(&self) -> Outcome {
        match self {
            TrainingError::Database(e) => Outcome::of_database(e),
            TrainingError::Queue(e) => Outcome::of_queue(e),
            TrainingError::Scoring(e) => e.outcome(),
            TrainingError::Transient(_) => Outcome::Retry,
            TrainingError::NotFound(_)
            | TrainingError::Conflict(_)
            | TrainingError::Model(_)
            | TrainingError::Invalid(_) => Outcome::Fail,
            TrainingError::Cancelled => Outcome::Cancelled,
            TrainingError::Interrupted => Outcome::Interrupted,
        }
    }
}

impl From<TrainingError> for JobError {
    fn from(e: TrainingError) -> Self {
        JobError::from_failure(e)
    }
}

/// What the registry's cancel and retry calls see: the queue and database errors as they were,
/// a conflict as a conflict. The other kinds come from running jobs, never from those calls;
/// should one reach them it is answered as a server fault.
impl From<TrainingError> for LifecycleError {
    fn from(e: TrainingError) -> Self {
        match e {
            TrainingError::Database(db) => LifecycleError::Queue(QueueError::Database(db)),
            TrainingError::Queue(q) => LifecycleError::Queue(q),
            TrainingError::Scoring(s) => s.into(),
            TrainingError::Conflict(message) => LifecycleError::Conflict(message),
            other => LifecycleError::Queue(QueueError::Apalis(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_error(e: TrainingError) -> JobError {
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
            let ours = job_error(TrainingError::from(mine));
            assert_eq!(format!("{ours:?}"), format!("{theirs:?}"));
        }
        for (mine, queue) in statements().into_iter().zip(statements()) {
            let theirs = JobError::from(QueueError::Database(queue));
            let ours = job_error(TrainingError::from(QueueError::Database(mine)));
            assert_eq!(format!("{ours:?}"), format!("{theirs:?}"));
        }
    }

    #[test]
    fn what_a_run_records_reads_as_before() {
        let run = Uuid::nil();
        assert!(matches!(
            job_error(TrainingError::Invalid(format!("training run {run} does not exist"))),
            JobError::Fatal(m) if m == format!("training run {run} does not exist")
        ));
        assert!(matches!(
            job_error(TrainingError::Invalid(format!("dataset {run} no longer exists"))),
            JobError::Fatal(m) if m == format!("dataset {run} no longer exists")
        ));
        assert!(matches!(
            job_error(TrainingError::Transient("saving epoch 3: pool closed".into())),
            JobError::Retryable(m) if m == "saving epoch 3: pool closed"
        ));
        assert!(matches!(
            job_error(TrainingError::Transient("spilling vectors to a file: disk full".into())),
            JobError::Retryable(m) if m == "spilling vectors to a file: disk full"
        ));
        assert!(matches!(
            job_error(TrainingError::Queue(QueueError::Apalis("lost".into()))),
            JobError::Retryable(m) if m == "queue: lost"
        ));
        assert!(matches!(
            job_error(TrainingError::Cancelled),
            JobError::Cancelled
        ));
        assert!(matches!(
            job_error(TrainingError::Interrupted),
            JobError::Interrupted
        ));
        assert_eq!(
            JobError::from(TrainingError::Interrupted).to_string(),
            "interrupted: the worker is shutting down"
        );
        assert_eq!(
            JobError::from(TrainingError::Cancelled).to_string(),
            "cancelled"
        );
    }

    #[test]
    fn the_trainer_fails_for_good_unless_it_was_cancelled() {
        assert!(matches!(
            TrainingError::from(TrainError::Cancelled),
            TrainingError::Cancelled
        ));
        assert!(matches!(
            job_error(TrainError::Failed("shape mismatch".into()).into()),
            JobError::Fatal(m) if m == "shape mismatch"
        ));
        assert!(matches!(
            job_error(TrainingError::Model("bad weights".into())),
            JobError::Fatal(m) if m == "bad weights"
        ));
    }

    #[test]
    fn the_promotion_gate_keeps_scoring_s_classification() {
        let message = format!("database: {}", sqlx::Error::PoolTimedOut);
        assert!(matches!(
            job_error(ScoringError::Database(sqlx::Error::PoolTimedOut).into()),
            JobError::Retryable(m) if m == message
        ));
        assert!(matches!(
            job_error(ScoringError::Database(sqlx::Error::RowNotFound).into()),
            JobError::Fatal(m) if m.starts_with("database: ")
        ));
        assert!(matches!(
            job_error(ScoringError::Invalid("no such version".into()).into()),
            JobError::Fatal(m) if m == "no such version"
        ));
        assert!(matches!(
            job_error(ScoringError::Transient("registry".into()).into()),
            JobError::Retryable(m) if m == "registry"
        ));
        assert!(matches!(
            job_error(ScoringError::Cancelled.into()),
            JobError::Cancelled
        ));
    }

    #[test]
    fn lifecycle_calls_see_the_errors_they_saw() {
        assert!(matches!(
            LifecycleError::from(TrainingError::Database(sqlx::Error::PoolTimedOut)),
            LifecycleError::Queue(QueueError::Database(sqlx::Error::PoolTimedOut))
        ));
        assert!(matches!(
            LifecycleError::from(TrainingError::Conflict("finished".into())),
            LifecycleError::Conflict(m) if m == "finished"
        ));
        assert!(matches!(
            LifecycleError::from(TrainingError::Queue(QueueError::NotFound("j1".into()))),
            LifecycleError::Queue(QueueError::NotFound(id)) if id == "j1"
        ));
    }
}
