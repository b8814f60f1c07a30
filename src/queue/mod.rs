//! Only this module knows apalis: enqueueing, job state, cancel/retry, pruning, the job context
//! and error handed to handlers, and the worker that runs them.
//!
//! Jobs live in `apalis.jobs` (one queue per job kind, named by `JobKind::queue`); what apalis
//! does not track (progress, cancellation, the dataset a job belongs to) lives in `job_info`.
//! Backoff between attempts is set in the database by a trigger (see migrations), so a retry
//! survives any worker restart.
pub mod gauges;
pub mod job;
pub mod tracker;
pub mod worker;

pub use job::{JobContext, JobError, StopFlag};

use apalis::prelude::{TaskBuilder, TaskId};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool, Row};
use trainyard_jobs::JobKind;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A job's arguments could not be serialized: a bug, never worth retrying.
    #[error("job arguments: {0}")]
    Serialization(#[from] serde_json::Error),
    /// apalis failed for a reason of its own (not the database's).
    #[error("queue: {0}")]
    Apalis(String),
    #[error("job {0} not found")]
    NotFound(String),
    #[error("job {id} is {status}: {action} is not possible")]
    Conflict {
        id: String,
        status: JobStatus,
        action: &'static str,
    },
}

impl QueueError {
    /// apalis-postgres wraps the sqlx error of a failed statement (a lost connection mid
    /// transaction, a restarted server): keep it a database error, so that the API answers it
    /// like any other (503 `database_unavailable` when the database is away, else 500) and a job
    /// retries it.
    pub fn from_apalis(e: apalis_postgres::Error) -> QueueError {
        match e {
            apalis_postgres::Error::Database(db) => QueueError::Database(db),
            apalis_postgres::Error::JsonError(json) => QueueError::Serialization(json),
            other => QueueError::Apalis(other.to_string()),
        }
    }
}

/// One job to enqueue: kind, serialized arguments, and what it belongs to.
pub struct NewJob<A: Serialize> {
    pub kind: JobKind,
    pub args: A,
    pub dataset_id: Option<Uuid>,
    /// The scoring job a `score` chunk belongs to (its progress and cancel).
    pub scoring_job_id: Option<Uuid>,
    pub progress_total: i64,
}

/// Creates the queue's tables (apalis's migrations, schema `apalis`). Idempotent; needs the
/// `hstore` extension.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    apalis_postgres::PostgresStorage::<()>::setup(pool)
        .await
        .map_err(|e| anyhow::anyhow!("apalis migrations: {e}"))
}

/// Whether job `id` has finished successfully (false when it has not, failed, or is unknown).
pub async fn job_succeeded(conn: &mut PgConnection, id: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM apalis.jobs WHERE id = $1 AND status = 'Done')",
    )
    .bind(id)
    .fetch_one(conn)
    .await
}

/// Enqueues jobs inside the caller's transaction (so jobs and the rows they need commit
/// together). Returns the job ids in order.
pub async fn enqueue<A: Serialize>(
    conn: &mut PgConnection,
    jobs: Vec<NewJob<A>>,
    max_attempts: i32,
) -> Result<Vec<String>, QueueError> {
    let Some(first) = jobs.first() else {
        return Ok(Vec::new());
    };
    let kind = first.kind;
    // The enqueuing span's W3C context rides in each job's stored metadata (not its
    // arguments), so the worker's span continues this trace.
    let trace_context = apalis::prelude::MetadataStore::from_map(
        crate::telemetry::propagation::current_context_map(),
    );
    let mut tasks = Vec::with_capacity(jobs.len());
    let mut ids = Vec::with_capacity(jobs.len());
    let mut datasets = Vec::with_capacity(jobs.len());
    let mut scorings = Vec::with_capacity(jobs.len());
    let mut totals = Vec::with_capacity(jobs.len());
    for job in &jobs {
        assert_eq!(job.kind, kind, "one enqueue call per job kind");
        let id = ulid::Ulid::generate();
        let bytes = serde_json::to_vec(&job.args)?;
        tasks.push(
            TaskBuilder::new(bytes)
                .task_id(TaskId::from_ulid(id))
                .max_attempts(max_attempts as usize)
                .with_metadata(trace_context.clone())
                .build(),
        );
        ids.push(id.to_string());
        datasets.push(job.dataset_id);
        scorings.push(job.scoring_job_id);
        totals.push(job.progress_total);
    }
    sqlx::query(
        "INSERT INTO job_info (job_id, kind, dataset_id, progress_total, scoring_job_id)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::uuid[], $4::bigint[], $5::uuid[])",
    )
    .bind(&ids)
    .bind(vec![kind.queue(); ids.len()])
    .bind(&datasets)
    .bind(&totals)
    .bind(&scorings)
    .execute(&mut *conn)
    .await?;
    apalis_postgres::queries::push_tasks(conn, kind.queue(), tasks)
        .await
        .map_err(QueueError::from_apalis)?;
    // Counted when pushed inside the caller's transaction; a rolled-back enqueue still counts.
    crate::telemetry::metrics().jobs_enqueued.add(
        ids.len() as u64,
        &[crate::telemetry::instruments::kind(kind.queue())],
    );
    Ok(ids)
}

crate::db::text_enum! {
    /// A job's state as the API shows it (computed from apalis's raw status, see [`api_status`]).
    pub enum JobStatus {
        Queued = "queued",
        Running = "running",
        Retrying = "retrying",
        Succeeded = "succeeded",
        Failed = "failed",
        Cancelled = "cancelled",
    }
}

impl JobStatus {
    /// Whether the job has ended (it runs no more unless retried).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    pub id: String,
    pub kind: String,
    pub status: JobStatus,
    pub attempts: i32,
    pub max_attempts: i32,
    pub progress_done: i64,
    pub progress_total: i64,
    pub dataset_id: Option<Uuid>,
    pub scoring_job_id: Option<Uuid>,
    pub result: Option<serde_json::Value>,
    pub last_error: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub run_at: Option<DateTime<Utc>>,
    pub worker: Option<String>,
}

const SELECT_JOBS: &str = "
SELECT j.id, j.job_type, j.status, j.attempts, j.max_attempts, j.run_at, j.lock_at, j.done_at,
       j.last_result, j.lock_by, i.progress_done, i.progress_total, i.cancel_requested,
       i.dataset_id, i.scoring_job_id, i.created_at
FROM apalis.jobs j LEFT JOIN job_info i ON i.job_id = j.id";

/// Maps apalis's raw status to the API's.
pub fn api_status(
    raw: &str,
    attempts: i32,
    max_attempts: i32,
    cancel_requested: bool,
) -> JobStatus {
    match raw {
        "Done" => JobStatus::Succeeded,
        "Running" => JobStatus::Running,
        "Killed" if cancel_requested => JobStatus::Cancelled,
        "Killed" => JobStatus::Failed,
        "Failed" if attempts >= max_attempts => JobStatus::Failed,
        "Failed" => JobStatus::Retrying,
        _ => JobStatus::Queued,
    }
}

fn row_to_view(row: &sqlx::postgres::PgRow) -> Result<JobView, sqlx::Error> {
    let raw: String = row.try_get("status")?;
    let attempts: i32 = row.try_get("attempts")?;
    let max_attempts: i32 = row.try_get("max_attempts")?;
    let cancel: Option<bool> = row.try_get("cancel_requested")?;
    let last: Option<serde_json::Value> = row.try_get("last_result")?;
    let (result, last_error) = match last {
        Some(serde_json::Value::Object(map)) if map.contains_key("Err") => (
            None,
            map.get("Err").map(|e| {
                e.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| e.to_string())
            }),
        ),
        Some(serde_json::Value::Object(map)) if map.contains_key("Ok") => {
            (map.get("Ok").cloned(), None)
        }
        other => (other, None),
    };
    let status = api_status(&raw, attempts, max_attempts, cancel.unwrap_or(false));
    let running = matches!(status, JobStatus::Running | JobStatus::Queued);
    let progress_total = row
        .try_get::<Option<i64>, _>("progress_total")?
        .unwrap_or(0);
    // A succeeded job is complete whatever its last buffered progress write said (workers
    // write progress a tick late and not at all after success: see `tracker`).
    let progress_done = if status == JobStatus::Succeeded {
        progress_total
    } else {
        row.try_get::<Option<i64>, _>("progress_done")?.unwrap_or(0)
    };
    Ok(JobView {
        id: row.try_get("id")?,
        kind: row.try_get("job_type")?,
        status,
        attempts,
        max_attempts,
        progress_done,
        progress_total,
        dataset_id: row.try_get("dataset_id")?,
        scoring_job_id: row.try_get("scoring_job_id")?,
        result: if status == JobStatus::Succeeded {
            result
        } else {
            None
        },
        last_error: if status == JobStatus::Succeeded {
            None
        } else {
            last_error
        },
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("lock_at")?,
        finished_at: if running {
            None
        } else {
            row.try_get("done_at")?
        },
        run_at: row.try_get("run_at")?,
        worker: row.try_get("lock_by")?,
    })
}

pub async fn get_job(pool: &PgPool, id: &str) -> Result<JobView, QueueError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{SELECT_JOBS} WHERE j.id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| QueueError::NotFound(id.to_string()))?;
    Ok(row_to_view(&row)?)
}

/// Lists jobs newest first; `status` is an API status.
pub async fn list_jobs(
    pool: &PgPool,
    kind: Option<&str>,
    status: Option<JobStatus>,
    limit: i64,
    offset: i64,
) -> Result<(Vec<JobView>, i64), QueueError> {
    // API statuses map to conditions on apalis's columns.
    let status_sql = match status {
        None => "true",
        Some(JobStatus::Queued) => "j.status IN ('Pending', 'Queued')",
        Some(JobStatus::Running) => "j.status = 'Running'",
        Some(JobStatus::Retrying) => "(j.status = 'Failed' AND j.attempts < j.max_attempts)",
        Some(JobStatus::Succeeded) => "j.status = 'Done'",
        Some(JobStatus::Failed) => {
            "((j.status = 'Failed' AND j.attempts >= j.max_attempts) OR (j.status = 'Killed' AND NOT coalesce(i.cancel_requested, false)))"
        }
        Some(JobStatus::Cancelled) => "(j.status = 'Killed' AND coalesce(i.cancel_requested, false))",
    };
    let filter = format!("WHERE ($1::text IS NULL OR j.job_type = $1) AND {status_sql}");
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{SELECT_JOBS} {filter} ORDER BY coalesce(i.created_at, j.run_at) DESC, j.id DESC LIMIT $2 OFFSET $3"
    )))
    .bind(kind)
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?;
    let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM apalis.jobs j LEFT JOIN job_info i ON i.job_id = j.id {filter}"
    )))
    .bind(kind)
    .fetch_one(pool)
    .await?;
    let jobs = rows
        .iter()
        .map(row_to_view)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((jobs, total))
}

/// Cancels a job: a pending one never runs; a running one stops at its next checkpoint.
pub async fn cancel_job(pool: &PgPool, id: &str) -> Result<JobView, QueueError> {
    let job = get_job(pool, id).await?;
    if job.status.is_final() {
        return Err(QueueError::Conflict {
            id: id.into(),
            status: job.status,
            action: "cancel",
        });
    }
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO job_info (job_id, kind, cancel_requested) VALUES ($1, $2, true)
         ON CONFLICT (job_id) DO UPDATE SET cancel_requested = true",
    )
    .bind(id)
    .bind(&job.kind)
    .execute(&mut *tx)
    .await?;
    kill_if_waiting(&mut tx, id).await?;
    tx.commit().await?;
    get_job(pool, id).await
}

/// What a group of jobs belongs to: a dataset (its build and embed jobs) or a scoring job
/// (its plan and chunks).
#[derive(Debug, Clone, Copy)]
pub enum Owner {
    Dataset(Uuid),
    ScoringJob(Uuid),
}

impl Owner {
    fn column_and_id(self) -> (&'static str, Uuid) {
        match self {
            Owner::Dataset(id) => ("dataset_id", id),
            Owner::ScoringJob(id) => ("scoring_job_id", id),
        }
    }
}

/// Cancels every unfinished job of an owner (a cancelled build or scoring job): running ones
/// stop at their next checkpoint, waiting ones never start.
pub async fn cancel_owned_jobs(conn: &mut PgConnection, owner: Owner) -> Result<u64, QueueError> {
    let (column, id) = owner.column_and_id();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE job_info SET cancel_requested = true WHERE {column} = $1"
    )))
    .bind(id)
    .execute(&mut *conn)
    .await?;
    let done = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE apalis.jobs j SET status = 'Killed', done_at = now(), last_result = '{{\"Err\": \"cancelled\"}}'::jsonb
         FROM job_info i WHERE i.job_id = j.id AND i.{column} = $1 AND j.status IN ('Pending', 'Failed')"
    )))
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

/// Cancels one job inside the caller's transaction: running, it stops at its next checkpoint;
/// waiting, it never starts. A finished job is left as it is.
pub async fn cancel_job_in(conn: &mut PgConnection, id: &str) -> Result<(), QueueError> {
    sqlx::query("UPDATE job_info SET cancel_requested = true WHERE job_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    kill_if_waiting(conn, id).await
}

/// Ends a job that is waiting (pending, or failed and waiting for its retry) as cancelled; a
/// running or finished one is left to its cancel flag.
async fn kill_if_waiting(conn: &mut PgConnection, id: &str) -> Result<(), QueueError> {
    sqlx::query(
        "UPDATE apalis.jobs SET status = 'Killed', done_at = now(), last_result = '{\"Err\": \"cancelled\"}'::jsonb
         WHERE id = $1 AND status IN ('Pending', 'Failed')",
    )
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Puts every failed job of an owner back in its queue with a fresh attempt budget (a
/// scoring job whose chunks failed runs them all again). Returns how many.
pub async fn retry_failed_owned_jobs(
    conn: &mut PgConnection,
    owner: Owner,
) -> Result<u64, QueueError> {
    let (column, id) = owner.column_and_id();
    let retried = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE apalis.jobs j SET status = 'Pending', attempts = 0, run_at = now(), done_at = NULL,
                lock_by = NULL, lock_at = NULL, last_result = NULL
         FROM job_info i
         WHERE i.job_id = j.id AND i.{column} = $1 AND NOT i.cancel_requested
           AND (j.status = 'Killed' OR (j.status = 'Failed' AND j.attempts >= j.max_attempts))"
    )))
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(retried.rows_affected())
}

/// Puts a failed (or cancelled) job back in its queue with a fresh attempt budget.
/// Runs inside the caller's transaction, so that whatever the job depends on can be reset
/// in the same commit (a worker must never see the job pending before that).
pub async fn retry_job(conn: &mut PgConnection, job: &JobView) -> Result<(), QueueError> {
    if !matches!(job.status, JobStatus::Failed | JobStatus::Cancelled) {
        return Err(QueueError::Conflict {
            id: job.id.clone(),
            status: job.status,
            action: "retry",
        });
    }
    sqlx::query("UPDATE job_info SET cancel_requested = false WHERE job_id = $1")
        .bind(&job.id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE apalis.jobs SET status = 'Pending', attempts = 0, run_at = now(), done_at = NULL,
                lock_by = NULL, lock_at = NULL, last_result = NULL
         WHERE id = $1",
    )
    .bind(&job.id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Deletes finished jobs older than `hours`. Returns how many went.
pub async fn prune_finished(pool: &PgPool, hours: f64) -> Result<u64, QueueError> {
    let deleted = sqlx::query(
        "WITH gone AS (
            DELETE FROM apalis.jobs
            WHERE (status IN ('Done', 'Killed') OR (status = 'Failed' AND attempts >= max_attempts))
              AND done_at < now() - make_interval(secs => $1)
            RETURNING id)
         DELETE FROM job_info WHERE job_id IN (SELECT id FROM gone)",
    )
    .bind(hours * 3600.0)
    .execute(pool)
    .await?;
    Ok(deleted.rows_affected())
}

/// Progress summed over an owner's jobs of one kind: (done, total, when the first started),
/// or `None` when it has no such jobs (never had, or pruned).
pub async fn owned_jobs_progress(
    pool: &PgPool,
    owner: Owner,
    kind: JobKind,
) -> Result<Option<(i64, i64, Option<DateTime<Utc>>)>, QueueError> {
    let (column, id) = owner.column_and_id();
    let row: (i64, Option<i64>, Option<i64>, Option<DateTime<Utc>>) =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*),
                sum(CASE WHEN j.status = 'Done' THEN i.progress_total ELSE i.progress_done END)::bigint,
                sum(i.progress_total)::bigint, min(j.lock_at)
         FROM job_info i JOIN apalis.jobs j ON j.id = i.job_id
         WHERE i.{column} = $1 AND i.kind = $2"
        )))
        .bind(id)
        .bind(kind.queue())
        .fetch_one(pool)
        .await?;
    Ok((row.0 > 0).then(|| (row.1.unwrap_or(0), row.2.unwrap_or(0), row.3)))
}

/// One queue's depth.
#[derive(Debug, Clone)]
pub struct QueueDepth {
    pub queue: String,
    /// Jobs that will run (pending, or failed with attempts left).
    pub waiting: i64,
    pub running: i64,
    /// Since when the longest-waiting job could have run (its `run_at`, not in the future);
    /// None when nothing waits.
    pub oldest_waiting_since: Option<chrono::DateTime<chrono::Utc>>,
}

/// Jobs waiting and running per queue, and how long the oldest has waited.
pub async fn queue_depths(pool: &PgPool) -> Result<Vec<QueueDepth>, QueueError> {
    let rows = sqlx::query(
        "SELECT job_type,
                count(*) FILTER (WHERE status IN ('Pending', 'Queued') OR (status = 'Failed' AND attempts < max_attempts)),
                count(*) FILTER (WHERE status = 'Running'),
                min(run_at) FILTER (WHERE (status IN ('Pending', 'Queued') OR (status = 'Failed' AND attempts < max_attempts))
                                      AND run_at <= now())
         FROM apalis.jobs GROUP BY job_type ORDER BY job_type",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| QueueDepth {
            queue: r.get(0),
            waiting: r.get(1),
            running: r.get(2),
            oldest_waiting_since: r.get(3),
        })
        .collect())
}

pub async fn live_workers(
    pool: &PgPool,
    within_secs: f64,
) -> Result<Vec<(String, String)>, QueueError> {
    let rows = sqlx::query(
        "SELECT id, worker_type FROM apalis.workers WHERE last_seen > now() - make_interval(secs => $1) ORDER BY id",
    )
    .bind(within_secs)
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apalis_database_errors_stay_database_errors() {
        // What push_tasks returns when the connection dies mid-transaction.
        let lost = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        let e = QueueError::from_apalis(apalis_postgres::Error::Database(lost));
        assert!(
            matches!(&e, QueueError::Database(db) if crate::db::is_unavailable(db)),
            "{e:?}"
        );
        assert!(matches!(JobError::from(e), JobError::Retryable(_)));
        let json = serde_json::from_str::<u8>("x").unwrap_err();
        let e = QueueError::from_apalis(apalis_postgres::Error::JsonError(json));
        assert!(matches!(e, QueueError::Serialization(_)), "{e:?}");
        assert!(matches!(JobError::from(e), JobError::Fatal(_)));
        let e = QueueError::from_apalis(apalis_postgres::Error::WorkerOutOfSync);
        assert!(matches!(e, QueueError::Apalis(_)), "{e:?}");
    }
}
