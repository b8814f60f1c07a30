//! Scoring jobs in Postgres: creation (row and plan job in one transaction), reads, result
//! pages, cancel, retrying a failed one's jobs, and failing a job whose chunk ran out of
//! attempts.
//!
//! A scoring job may belong to an evaluation (`scoring::evaluation`), which depends on this
//! module, never the other way round, but for one call: what happens to a scoring job (it
//! succeeds, fails for good, is cancelled, or is retried after failing) reaches its evaluation
//! as a [`ScoringJobOutcome`] through `report`, the one place this module names the
//! evaluation (its hook `evaluation::on_scoring_job_outcome`), in the transaction that changed
//! the scoring job.
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Row};
use trainyard_jobs::{JobKind, ScoreArgs};
use uuid::Uuid;

use super::{positive_labels, ScoredDocument, ScoringError, ScoringTarget};
use crate::queue::{self, JobContext, JobError, NewJob, Owner, QueueError};

crate::db::text_enum! {
    /// A scoring job's state (`scoring_jobs.status`): `pending` until its plan runs,
    /// `planning`, `scoring` while its chunks run, then `done`; or `failed` / `cancelled`.
    pub enum ScoringStatus {
        Pending = "pending",
        Planning = "planning",
        Scoring = "scoring",
        Done = "done",
        Failed = "failed",
        Cancelled = "cancelled",
    }
}

#[derive(Debug, Clone)]
pub struct ScoringJobRow {
    pub id: Uuid,
    pub model_name: String,
    pub version: i32,
    pub labels: Vec<String>,
    pub thresholds: Vec<f32>,
    pub threshold_source: String,
    pub request: serde_json::Value,
    pub evaluation_id: Option<Uuid>,
    pub status: ScoringStatus,
    pub plan_job_id: Option<String>,
    pub error: Option<String>,
    pub chunks_total: i32,
    pub chunks_done: i32,
    pub documents_total: i64,
    pub excluded_empty_text: i64,
    pub scored: i64,
    pub reused: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl ScoringJobRow {
    pub fn target(&self) -> Result<ScoringTarget, serde_json::Error> {
        serde_json::from_value(self.request.clone())
    }

    fn from_row(r: &sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        Ok(ScoringJobRow {
            id: r.try_get("id")?,
            model_name: r.try_get("model_name")?,
            version: r.try_get("version")?,
            labels: r.try_get("labels")?,
            thresholds: r.try_get("thresholds")?,
            threshold_source: r.try_get("threshold_source")?,
            request: r.try_get("request")?,
            evaluation_id: r.try_get("evaluation_id")?,
            status: r.try_get("status")?,
            plan_job_id: r.try_get("plan_job_id")?,
            error: r.try_get("error")?,
            chunks_total: r.try_get("chunks_total")?,
            chunks_done: r.try_get("chunks_done")?,
            documents_total: r.try_get("documents_total")?,
            excluded_empty_text: r.try_get("excluded_empty_text")?,
            scored: r.try_get("scored")?,
            reused: r.try_get("reused")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
            started_at: r.try_get("started_at")?,
            finished_at: r.try_get("finished_at")?,
        })
    }
}

/// What a new scoring job scores, with which version and thresholds.
pub struct NewScoringJob<'a> {
    pub model_name: &'a str,
    pub version: i32,
    pub labels: &'a [String],
    pub thresholds: &'a [f32],
    /// `stored` (the version's own) or `request`.
    pub threshold_source: &'a str,
    pub target: &'a ScoringTarget,
    pub evaluation_id: Option<Uuid>,
}

/// Inserts the scoring job and enqueues its plan in one transaction.
pub async fn create(
    pool: &PgPool,
    new: &NewScoringJob<'_>,
    max_attempts: i32,
) -> Result<Uuid, ScoringError> {
    let mut tx = pool.begin().await?;
    let id = create_in(&mut tx, new, max_attempts).await?;
    tx.commit().await?;
    Ok(id)
}

/// [`create`] inside the caller's transaction.
pub async fn create_in(
    conn: &mut PgConnection,
    new: &NewScoringJob<'_>,
    max_attempts: i32,
) -> Result<Uuid, ScoringError> {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO scoring_jobs (id, model_name, version, labels, thresholds, threshold_source, request, evaluation_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id)
    .bind(new.model_name)
    .bind(new.version)
    .bind(new.labels)
    .bind(new.thresholds)
    .bind(new.threshold_source)
    .bind(serde_json::to_value(new.target).map_err(QueueError::Serialization)?)
    .bind(new.evaluation_id)
    .execute(&mut *conn)
    .await?;
    let ids = queue::enqueue(
        conn,
        vec![NewJob {
            kind: JobKind::Score,
            args: ScoreArgs {
                scoring_job_id: id,
                chunk: None,
            },
            dataset_id: None,
            scoring_job_id: Some(id),
            progress_total: 1,
        }],
        max_attempts,
    )
    .await?;
    sqlx::query("UPDATE scoring_jobs SET plan_job_id = $2 WHERE id = $1")
        .bind(id)
        .bind(&ids[0])
        .execute(&mut *conn)
        .await?;
    Ok(id)
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<ScoringJobRow>, ScoringError> {
    Ok(sqlx::query("SELECT * FROM scoring_jobs WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?
        .map(|r| ScoringJobRow::from_row(&r))
        .transpose()?)
}

/// Scoring jobs newest first, and how many there are.
pub async fn list(
    pool: &PgPool,
    evaluation_id: Option<Uuid>,
    limit: i64,
    offset: i64,
) -> Result<(Vec<ScoringJobRow>, i64), ScoringError> {
    let rows = sqlx::query(
        "SELECT * FROM scoring_jobs WHERE ($1::uuid IS NULL OR evaluation_id = $1)
         ORDER BY created_at DESC, id LIMIT $2 OFFSET $3",
    )
    .bind(evaluation_id)
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?;
    let total: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM scoring_jobs WHERE ($1::uuid IS NULL OR evaluation_id = $1)",
    )
    .bind(evaluation_id)
    .fetch_one(pool)
    .await?;
    let items = rows
        .iter()
        .map(ScoringJobRow::from_row)
        .collect::<Result<_, _>>()?;
    Ok((items, total))
}

/// A page of a job's results: the positions `[$4, $4 + $5)` (positions are dense, 0 to
/// `documents_total`; a bounded range keeps the plan to one page's rows), each document and
/// score one primary-key probe (LATERAL with a LIMIT: never a scan of all scores or documents,
/// whatever the statistics say), so a page at any offset costs the same.
pub const RESULTS_PAGE: &str = "
SELECT m.position, m.document_id, d.source, d.external_id, s.scores
FROM scoring_job_documents m
CROSS JOIN LATERAL (
    SELECT source, external_id FROM documents WHERE id = m.document_id LIMIT 1
) d
CROSS JOIN LATERAL (
    SELECT scores FROM document_scores
    WHERE model_name = $2 AND version = $3 AND document_id = m.document_id AND checksum = m.checksum
    LIMIT 1
) s
WHERE m.scoring_job_id = $1 AND m.position >= $4 AND m.position < $4 + $5
ORDER BY m.position";

fn to_scored(job: &ScoringJobRow, r: &sqlx::postgres::PgRow) -> ScoredDocument {
    let scores: Vec<f32> = r.get("scores");
    ScoredDocument {
        position: r.get("position"),
        document_id: r.get("document_id"),
        source: r.get("source"),
        external_id: r.get("external_id"),
        version: job.version,
        positive_labels: positive_labels(&job.labels, &scores, &job.thresholds),
        scores: job.labels.iter().cloned().zip(scores).collect(),
    }
}

/// One page of a job's results in document order, and the number of documents it covers. A
/// document not scored yet is left out of the page (a finished job has every one).
pub async fn results(
    pool: &PgPool,
    job: &ScoringJobRow,
    limit: i64,
    offset: i64,
) -> Result<(Vec<ScoredDocument>, i64), ScoringError> {
    let rows = sqlx::query(RESULTS_PAGE)
        .bind(job.id)
        .bind(&job.model_name)
        .bind(job.version)
        .bind(offset.min(i32::MAX as i64) as i32)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    // Positions are 0..documents_total, written with the plan; before it there are none.
    let total = job.documents_total;
    Ok((rows.iter().map(|r| to_scored(job, r)).collect(), total))
}

/// The results at positions `[from, from + limit)` (an export reads a job of any size in pages
/// of constant cost). Fails with the statement's own error: the page reader of
/// `streamed_export`, shared with the dataset export, takes that.
pub async fn results_from(
    pool: &PgPool,
    job: &ScoringJobRow,
    from: i32,
    limit: i64,
) -> Result<Vec<ScoredDocument>, sqlx::Error> {
    let rows = sqlx::query(RESULTS_PAGE)
        .bind(job.id)
        .bind(&job.model_name)
        .bind(job.version)
        .bind(from)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    Ok(rows.iter().map(|r| to_scored(job, r)).collect())
}

/// Cancels a scoring job that has not finished: its waiting chunks never start, running ones
/// stop at their next checkpoint. A job of an evaluation cannot finish alone: the evaluation
/// and its other scoring jobs are cancelled with it. Returns false when it had already ended.
pub async fn cancel(pool: &PgPool, id: Uuid) -> Result<bool, ScoringError> {
    let mut tx = pool.begin().await?;
    let cancelled = cancel_in(&mut tx, id).await?;
    tx.commit().await?;
    Ok(cancelled)
}

/// [`cancel`] inside the caller's transaction. An evaluation's unfinished scoring job is
/// reported [`ScoringJobOutcome::Cancelled`] before anything is locked: the evaluation cancels
/// it with the others, locking them in the one order every writer of several takes.
pub async fn cancel_in(conn: &mut PgConnection, id: Uuid) -> Result<bool, ScoringError> {
    let Some(evaluation) = sqlx::query_scalar::<_, Option<Uuid>>(
        "SELECT evaluation_id FROM scoring_jobs WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(false);
    };
    if let Some(evaluation) = evaluation {
        let unfinished: Option<String> = sqlx::query_scalar(
            "SELECT status FROM scoring_jobs WHERE id = $1 AND status IN ('pending', 'planning', 'scoring')",
        )
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
        return match unfinished {
            Some(_) => report(conn, Some(evaluation), ScoringJobOutcome::Cancelled).await,
            None => Ok(false),
        };
    }
    lock_and_cancel(conn, &[id]).await
}

/// A job of a scoring job or an evaluation is retried only when that failed: a cancelled one
/// is not resumed (409), a new one reuses the scores already stored. Locks the row.
pub(super) async fn only_failed(
    conn: &mut PgConnection,
    table: &str,
    column: &str,
    key: &str,
    what: &str,
) -> Result<(), ScoringError> {
    let status: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT status FROM {table} WHERE {column}::text = $1 FOR UPDATE"
    )))
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?;
    match status.as_deref() {
        Some("failed") | None => Ok(()),
        Some(other) => Err(ScoringError::Conflict(format!(
            "its {what} is {other}: only a failed one is retried (start a new one instead; stored scores are reused)"
        ))),
    }
}

/// A failed job of a failed scoring job goes back in its queue (in the caller's transaction):
/// the scoring job (planned again unless its plan is done) and its failed evaluation are
/// unfinished again. A cancelled scoring job is not resumed: a new job reuses its scores.
pub async fn job_retrying(conn: &mut PgConnection, id: Uuid) -> Result<(), ScoringError> {
    only_failed(conn, "scoring_jobs", "id", &id.to_string(), "scoring job").await?;
    let plan_job: Option<String> =
        sqlx::query_scalar("SELECT plan_job_id FROM scoring_jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
            .flatten();
    let planned = match plan_job {
        Some(job) => crate::queue::job_succeeded(conn, &job).await?,
        None => false,
    };
    let evaluation: Option<Option<Uuid>> = sqlx::query_scalar(
        "UPDATE scoring_jobs SET error = NULL, finished_at = NULL, updated_at = now(),
                status = CASE WHEN $2 THEN 'scoring' ELSE 'pending' END
         WHERE id = $1 RETURNING evaluation_id",
    )
    .bind(id)
    .bind(planned)
    .fetch_optional(&mut *conn)
    .await?;
    report(conn, evaluation.flatten(), ScoringJobOutcome::Retrying).await?;
    Ok(())
}

/// Every failed job of a scoring job runs again (in the caller's transaction): one left failed
/// would keep it from finishing.
pub async fn retry_failed_jobs(conn: &mut PgConnection, id: Uuid) -> Result<(), ScoringError> {
    queue::retry_failed_owned_jobs(conn, Owner::ScoringJob(id)).await?;
    Ok(())
}

/// Locks the scoring jobs' rows (in id order, as every writer of several does) and cancels the
/// unfinished ones with their queued jobs; true when any was.
pub(super) async fn lock_and_cancel(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<bool, ScoringError> {
    let locked: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM scoring_jobs WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(ids)
            .fetch_all(&mut *conn)
            .await?;
    let cancelled: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE scoring_jobs SET status = 'cancelled', updated_at = now(), finished_at = now()
         WHERE id = ANY($1) AND status IN ('pending', 'planning', 'scoring') RETURNING id",
    )
    .bind(&locked)
    .fetch_all(&mut *conn)
    .await?;
    for job in &cancelled {
        queue::cancel_owned_jobs(conn, Owner::ScoringJob(*job)).await?;
    }
    Ok(!cancelled.is_empty())
}

/// When this failure ends the job (fatal, or its last attempt), the scoring job fails with it,
/// and so does the evaluation it belongs to.
pub(crate) async fn fail_if_final(ctx: &JobContext, id: Uuid, error: &JobError) {
    if matches!(error, JobError::Cancelled) || !ctx.is_last_attempt(error).await {
        return;
    }
    let message = format!("job {} failed: {error}", ctx.id);
    if let Err(e) = fail(&ctx.pool, id, &message).await {
        tracing::error!(scoring_job = %id, "could not mark scoring job failed: {e}");
    }
}

/// Fails an unfinished scoring job and reports it, in one transaction.
async fn fail(pool: &PgPool, id: Uuid, message: &str) -> Result<(), ScoringError> {
    let mut tx = pool.begin().await?;
    let failed: Option<Option<Uuid>> = sqlx::query_scalar(
        "UPDATE scoring_jobs SET status = 'failed', error = $2, updated_at = now(), finished_at = now()
         WHERE id = $1 AND status NOT IN ('done', 'cancelled', 'failed')
         RETURNING evaluation_id",
    )
    .bind(id)
    .bind(message)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(evaluation) = failed {
        report(
            &mut tx,
            evaluation,
            ScoringJobOutcome::Failed { error: message },
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// What happened to a scoring job, as the evaluation it belongs to hears of it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScoringJobOutcome<'a> {
    /// It is done: its last chunk, or a plan that found nothing to score, marked it so in this
    /// transaction. The evaluation's `evaluate` job is enqueued with `max_attempts` once every
    /// scoring job of it is done.
    Succeeded { max_attempts: i32 },
    /// It failed for good in this transaction, with this message.
    Failed { error: &'a str },
    /// It is to be cancelled and has not ended. An evaluation's scoring jobs cannot end alone:
    /// the evaluation is cancelled with all of them, this one included.
    Cancelled,
    /// It had failed and runs again (a retry, in this transaction).
    Retrying,
}

/// The one place a scoring job's outcome reaches its evaluation (when it belongs to one), in
/// the caller's transaction. Returns whether that changed anything (for
/// [`ScoringJobOutcome::Cancelled`]: whether anything was cancelled).
pub(super) async fn report(
    conn: &mut PgConnection,
    evaluation_id: Option<Uuid>,
    outcome: ScoringJobOutcome<'_>,
) -> Result<bool, ScoringError> {
    match evaluation_id {
        Some(evaluation) => {
            super::evaluation::on_scoring_job_outcome(conn, evaluation, outcome).await
        }
        None => Ok(false),
    }
}
