//! What the queue hands a job handler: the job's context (id, kind, pool, whether its worker
//! is stopping) and the typed error that tells the queue whether to retry the job or stop it.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sqlx::PgPool;
use trainyard_jobs::JobKind;

use super::tracker::JobTracker;
use super::QueueError;

/// How a job failed: retried later with backoff, or never again.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    Retryable(String),
    #[error("{0}")]
    Fatal(String),
    #[error("cancelled")]
    Cancelled,
    /// The worker is shutting down: the job stopped at a safe point and goes back to its queue
    /// as it was (no attempt is used up); the next attempt continues from what was saved.
    #[error("interrupted: the worker is shutting down")]
    Interrupted,
}

/// Set once when the worker process that runs a job starts shutting down (SIGTERM): long jobs
/// check it at their checkpoints and hand the job back with [`JobError::Interrupted`].
#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    pub fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What a failed attempt means to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The job was asked to stop.
    Cancelled,
    /// The worker is shutting down: the job goes back to its queue as it was.
    Interrupted,
    /// Trying again later may help.
    Retry,
    /// The same work fails the same way on every attempt.
    Fail,
}

impl Outcome {
    /// A statement's failure: a bug or bad data fails ([`crate::db::is_permanent`]); a lost
    /// connection, a restarted Postgres, a deadlock are retried.
    pub fn of_database(e: &sqlx::Error) -> Outcome {
        if crate::db::is_permanent(e) {
            Outcome::Fail
        } else {
            Outcome::Retry
        }
    }

    /// The queue's failure: arguments that do not serialize fail the same way every time.
    pub fn of_queue(e: &QueueError) -> Outcome {
        match e {
            QueueError::Serialization(_) => Outcome::Fail,
            QueueError::Database(db) => Outcome::of_database(db),
            _ => Outcome::Retry,
        }
    }
}

/// A domain's error type as the queue sees it: its [`Outcome`], and its message as what the
/// job records. Each domain (datasets, training, scoring) implements it once, and its
/// `From<…> for JobError` is [`JobError::from_failure`].
pub trait Failure: std::fmt::Display {
    fn outcome(&self) -> Outcome;
}

impl JobError {
    /// The one mapping of a domain's failure to a job's error.
    pub fn from_failure(e: impl Failure) -> JobError {
        match e.outcome() {
            Outcome::Cancelled => JobError::Cancelled,
            Outcome::Interrupted => JobError::Interrupted,
            Outcome::Retry => JobError::Retryable(e.to_string()),
            Outcome::Fail => JobError::Fatal(e.to_string()),
        }
    }
}

/// A statement, as a domain's error shows it (`database: …`).
struct Statement(sqlx::Error);

impl std::fmt::Display for Statement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "database: {}", self.0)
    }
}

impl Failure for Statement {
    fn outcome(&self) -> Outcome {
        Outcome::of_database(&self.0)
    }
}

impl Failure for QueueError {
    fn outcome(&self) -> Outcome {
        Outcome::of_queue(self)
    }
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        JobError::from_failure(Statement(e))
    }
}

impl From<QueueError> for JobError {
    fn from(e: QueueError) -> Self {
        JobError::from_failure(e)
    }
}

/// The job being run: its id and kind, the pool its queue lives in, whether the worker
/// running it is stopping, and the process's ledger of its jobs (cancel flags, progress).
#[derive(Debug, Clone)]
pub struct JobContext {
    pub id: String,
    pub kind: JobKind,
    pub pool: PgPool,
    pub stopping: StopFlag,
    pub(super) tracker: Arc<JobTracker>,
}

impl JobContext {
    /// Shows this job's progress as complete (`progress_total` of `progress_total`), in the
    /// caller's transaction: the one that commits the job's last work.
    pub async fn progress_complete(
        &self,
        conn: &mut sqlx::PgConnection,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE job_info SET progress_done = progress_total WHERE job_id = $1")
            .bind(&self.id)
            .execute(conn)
            .await
            .map(drop)
    }

    /// Shows this one-step job's progress as 1 of 1, in the caller's transaction.
    pub async fn progress_one_of_one(
        &self,
        conn: &mut sqlx::PgConnection,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE job_info SET progress_done = 1, progress_total = 1 WHERE job_id = $1")
            .bind(&self.id)
            .execute(conn)
            .await
            .map(drop)
    }

    /// Whether this job has been asked to stop (handlers check at their checkpoints). Read
    /// from memory: the worker process refreshes the flags of all its jobs in one query every
    /// `queue.tracker_interval_ms` (see [`JobTracker`]), so a checkpoint costs no round trip.
    pub fn cancel_requested(&self) -> bool {
        self.tracker.cancel_requested(&self.id)
    }

    /// Whether this failure ends the job: fatal, cancelled, or its last attempt. An interrupted
    /// job never ends: it is handed back.
    pub async fn is_last_attempt(&self, error: &JobError) -> bool {
        match error {
            JobError::Interrupted => false,
            JobError::Cancelled | JobError::Fatal(_) => true,
            JobError::Retryable(_) => {
                // apalis.jobs.attempts counts the attempts before this one.
                let row: Result<Option<(i32, i32)>, _> =
                    sqlx::query_as("SELECT attempts, max_attempts FROM apalis.jobs WHERE id = $1")
                        .bind(&self.id)
                        .fetch_optional(&self.pool)
                        .await;
                matches!(row, Ok(Some((attempts, max))) if attempts + 1 >= max)
            }
        }
    }

    /// Records how far the job has got (`job_info.progress_done`, of `progress_total`).
    ///
    /// Buffered: the worker process writes the latest value of every job it runs in one
    /// statement per tick (see [`JobTracker`]); a job that succeeds counts as complete
    /// wherever progress is read, so its last value is never written.
    pub fn set_progress(&self, done: i64, total: Option<i64>) {
        self.tracker.set_progress(&self.id, done, total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_trouble_is_retried_and_bugs_are_not() {
        for e in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        ] {
            assert!(matches!(JobError::from(e), JobError::Retryable(_)));
        }
        for e in [
            sqlx::Error::RowNotFound,
            sqlx::Error::ColumnNotFound("status".into()),
        ] {
            assert!(matches!(JobError::from(e), JobError::Fatal(m) if m.starts_with("database: ")));
        }
        let queued = QueueError::Database(sqlx::Error::Decode("not a uuid".into()));
        assert!(matches!(JobError::from(queued), JobError::Fatal(_)));
        let queued = QueueError::Database(sqlx::Error::PoolTimedOut);
        assert!(matches!(JobError::from(queued), JobError::Retryable(_)));
    }
}
