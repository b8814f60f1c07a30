//! The plan of a scoring job (a `score` job without a chunk): selects the documents, keeps
//! those whose score for the version on this very text (checksum) is missing, and fans them
//! out as chunks.
//!
//! Idempotent: the membership, the chunks and their jobs are written in one transaction under
//! the scoring job's row lock, guarded by its status; a re-run after that commit only reports.
use futures::TryStreamExt;
use serde_json::json;
use sqlx::Row;
use trainyard_jobs::{JobKind, ScoreArgs};

use super::store::{self, ScoringJobOutcome, ScoringJobRow, ScoringStatus};
use super::{ScoringError, ScoringTarget};
use crate::datasets::text::{checksum, combine_text};
use crate::queue::{self, JobContext, JobError, NewJob};
use crate::worker_state::WorkerState;

/// One document to cover: id, text and its checksum.
struct Item {
    document_id: i64,
    text: String,
    checksum: String,
}

/// Plans that stage at once in this process: each holds two connections of the pool (the
/// staging transaction and the stream it reads), so two of them waiting on each other's second
/// connection could take the last free ones and stall until the pool's timeout (seen with an
/// evaluation's two plans and two free connections, 2026-12-07). One at a time needs at most one
/// connection more than any other job.
static PLANNING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

pub async fn run_plan(
    state: &WorkerState,
    ctx: &JobContext,
    job: ScoringJobRow,
) -> Result<serde_json::Value, ScoringError> {
    let pool = &state.pool;
    match job.status {
        ScoringStatus::Cancelled => return Err(ScoringError::Cancelled),
        ScoringStatus::Scoring | ScoringStatus::Done | ScoringStatus::Failed => {
            return Ok(json!({"scoring_job_id": job.id, "status": job.status}))
        }
        _ => {}
    }
    if ctx.cancel_requested() {
        return Err(ScoringError::Cancelled);
    }
    sqlx::query(
        "UPDATE scoring_jobs SET status = 'planning', started_at = coalesce(started_at, now()), updated_at = now()
         WHERE id = $1 AND status = 'pending'",
    )
    .bind(job.id)
    .execute(pool)
    .await?;
    let target = job
        .target()
        .map_err(|e| ScoringError::Invalid(format!("stored request unreadable: {e}")))?;
    // The covered documents stream into a temporary table (dropped at commit); which of them
    // miss a score, and the chunks, are then worked out by the database: the worker holds one
    // block of documents, never the job.
    let _one_plan_at_a_time = PLANNING.acquire().await.ok();
    let mut tx = pool.begin().await?;
    sqlx::query(CREATE_STAGING).execute(&mut *tx).await?;
    let (documents, empty) = stage(state, ctx, &target, &mut tx).await?;
    let status: ScoringStatus =
        sqlx::query_scalar("SELECT status FROM scoring_jobs WHERE id = $1 FOR UPDATE")
            .bind(job.id)
            .fetch_one(&mut *tx)
            .await?;
    match status {
        ScoringStatus::Planning => {}
        ScoringStatus::Cancelled => return Err(ScoringError::Cancelled),
        _ => return Ok(json!({"scoring_job_id": job.id, "status": status})),
    }
    for table in ["scoring_job_documents", "scoring_chunks"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE scoring_job_id = $1"
        )))
        .bind(job.id)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "INSERT INTO scoring_job_documents (scoring_job_id, position, document_id, checksum)
         SELECT $1, position, document_id, checksum FROM plan_staging",
    )
    .bind(job.id)
    .execute(&mut *tx)
    .await?;
    let missing: i64 = sqlx::query_scalar(MARK_MISSING)
        .bind(&job.model_name)
        .bind(job.version)
        .fetch_one(&mut *tx)
        .await?;
    let chunk_size = chunk_size(missing as usize, state.settings.scoring.chunk_size);
    let chunks: Vec<(i32, i32)> = sqlx::query_as(WRITE_CHUNKS)
        .bind(job.id)
        .bind(chunk_size as i64)
        .fetch_all(&mut *tx)
        .await?;
    let mut jobs: Vec<NewJob<ScoreArgs>> = chunks
        .iter()
        .map(|&(no, size)| NewJob {
            kind: JobKind::Score,
            args: ScoreArgs {
                scoring_job_id: job.id,
                chunk: Some(no),
            },
            dataset_id: None,
            scoring_job_id: Some(job.id),
            progress_total: size as i64,
        })
        .collect();
    jobs.sort_by_key(|j| j.args.chunk);
    queue::enqueue(&mut tx, jobs, state.settings.queue.max_attempts).await?;
    let final_status = if chunks.is_empty() {
        ScoringStatus::Done
    } else {
        ScoringStatus::Scoring
    };
    sqlx::query(
        "UPDATE scoring_jobs SET status = $2, chunks_total = $3, chunks_done = 0, documents_total = $4,
                excluded_empty_text = $5, scored = 0, reused = $6, updated_at = now(),
                finished_at = CASE WHEN $2 = 'done' THEN now() END
         WHERE id = $1",
    )
    .bind(job.id)
    .bind(final_status)
    .bind(chunks.len() as i32)
    .bind(documents as i64)
    .bind(empty as i64)
    .bind(documents as i64 - missing)
    .execute(&mut *tx)
    .await?;
    if final_status == ScoringStatus::Done {
        let max_attempts = state.settings.queue.max_attempts;
        store::report(
            &mut tx,
            job.evaluation_id,
            ScoringJobOutcome::Succeeded { max_attempts },
        )
        .await?;
    }
    ctx.progress_one_of_one(&mut tx).await?;
    tx.commit().await?;
    tracing::info!(scoring_job = %job.id, documents, to_score = missing, chunks = chunks.len(), "scoring job planned");
    Ok(json!({
        "scoring_job_id": job.id,
        "status": final_status,
        "documents": documents,
        "to_score": missing,
        "reused": documents as i64 - missing,
        "excluded_empty_text": empty,
        "chunks": chunks.len(),
    }))
}

/// Documents per chunk: at most `configured`; a smaller job is cut into up to [`MIN_CHUNKS`]
/// chunks of no fewer than 100 documents, so that several workers share it.
fn chunk_size(documents: usize, configured: usize) -> usize {
    let configured = configured.max(1);
    documents
        .div_ceil(MIN_CHUNKS)
        .max(configured.min(100))
        .min(configured)
}

/// Chunks a job of at least 800 documents is cut into, at the least.
const MIN_CHUNKS: usize = 8;

/// The plan's scratch table: every covered document in order, its text and checksum, and
/// whether its score for the version on this text is missing.
const CREATE_STAGING: &str = "
CREATE TEMPORARY TABLE plan_staging (
    position    INTEGER PRIMARY KEY,
    document_id BIGINT  NOT NULL,
    checksum    TEXT    NOT NULL,
    text        TEXT    NOT NULL,
    missing     BOOLEAN NOT NULL DEFAULT false
) ON COMMIT DROP";

/// Marks the staged documents whose score for model `$1` version `$2` on this very text is not
/// stored (one primary-key probe each: a LATERAL subquery with a LIMIT is never turned into a
/// scan of all the version's scores) and counts them.
pub const MARK_MISSING: &str = "
WITH marked AS (
    UPDATE plan_staging p SET missing = true
    WHERE NOT EXISTS (
        SELECT 1 FROM (
            SELECT 1 FROM document_scores s
            WHERE s.model_name = $1 AND s.version = $2 AND s.document_id = p.document_id
              AND s.checksum = p.checksum
            LIMIT 1) hit)
    RETURNING 1)
SELECT count(*) FROM marked";

/// The missing documents as chunks of `$2`, in order.
const WRITE_CHUNKS: &str = "
INSERT INTO scoring_chunks (scoring_job_id, chunk_no, document_ids, checksums, texts)
SELECT $1, chunk_no, array_agg(document_id ORDER BY position), array_agg(checksum ORDER BY position),
       array_agg(text ORDER BY position)
FROM (SELECT position, document_id, checksum, text,
             ((row_number() OVER (ORDER BY position) - 1) / $2)::int AS chunk_no
      FROM plan_staging WHERE missing) m
GROUP BY chunk_no
RETURNING chunk_no, cardinality(document_ids)";

/// Documents staged at a time.
const STAGE_BLOCK: usize = 10_000;

/// Streams the documents a target covers, in a stable order (a dataset's record order; else
/// source and external id, as a dataset orders them), into `plan_staging`; returns how many
/// were staged and how many had no text.
async fn stage(
    state: &WorkerState,
    ctx: &JobContext,
    target: &ScoringTarget,
    tx: &mut sqlx::PgConnection,
) -> Result<(usize, usize), ScoringError> {
    let pool = &state.pool;
    let mut rows = match target {
        // The records' own texts (as the dataset was built); documents deleted since are
        // left out: there is nothing to attach their score to.
        ScoringTarget::Dataset { dataset_id, split } => sqlx::query(
            "SELECT r.document_id AS id, r.text, r.checksum, NULL::text AS title,
                    NULL::text AS description, NULL::text[] AS tags, NULL::text AS body
             FROM dataset_records r
             WHERE r.dataset_id = $1 AND ($2::text IS NULL OR r.split = $2)
               AND EXISTS (SELECT 1 FROM documents d WHERE d.id = r.document_id)
             ORDER BY r.position",
        )
        .bind(*dataset_id)
        .bind(split.clone())
        .fetch(pool),
        ScoringTarget::Documents { selection: sel } => sqlx::query(
            "SELECT d.id, NULL::text AS text, NULL::text AS checksum, d.title, d.description,
                    d.tags, d.body
             FROM documents d
             WHERE d.source = ANY($1) OR d.id = ANY($2) OR (d.source = $3 AND d.external_id = ANY($4))
             ORDER BY d.source, d.external_id",
        )
        .bind(sel.sources.clone())
        .bind(sel.document_ids.clone())
        .bind(sel.source.clone())
        .bind(sel.external_ids.clone())
        .fetch(pool),
    };
    let max_chars = state.settings.server.max_text_chars;
    let (mut staged, mut empty) = (0usize, 0usize);
    let mut block: Vec<Item> = Vec::with_capacity(STAGE_BLOCK);
    loop {
        let row = rows.try_next().await?;
        let done = row.is_none();
        if let Some(row) = row {
            let item = match row.get::<Option<String>, _>("text") {
                Some(text) => Some(Item {
                    document_id: row.get("id"),
                    checksum: row.get("checksum"),
                    text,
                }),
                None => {
                    let tags: Vec<String> = row
                        .get::<Option<Vec<String>>, _>("tags")
                        .unwrap_or_default();
                    let text = combine_text(
                        row.get::<Option<&str>, _>("title"),
                        row.get::<Option<&str>, _>("description"),
                        row.get::<Option<&str>, _>("body"),
                        &tags,
                        max_chars,
                    );
                    (!text.is_empty()).then(|| Item {
                        document_id: row.get("id"),
                        checksum: checksum(&text),
                        text,
                    })
                }
            };
            match item {
                Some(item) => block.push(item),
                None => empty += 1,
            }
        }
        if block.len() == STAGE_BLOCK || (done && !block.is_empty()) {
            if ctx.cancel_requested() {
                return Err(ScoringError::Cancelled);
            }
            sqlx::query(
                "INSERT INTO plan_staging (position, document_id, checksum, text)
                 SELECT * FROM UNNEST($1::int[], $2::bigint[], $3::text[], $4::text[])",
            )
            .bind(
                (0..block.len() as i32)
                    .map(|i| staged as i32 + i)
                    .collect::<Vec<_>>(),
            )
            .bind(block.iter().map(|i| i.document_id).collect::<Vec<_>>())
            .bind(
                block
                    .iter()
                    .map(|i| i.checksum.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(block.iter().map(|i| i.text.as_str()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
            staged += block.len();
            block.clear();
        }
        if done {
            break;
        }
    }
    Ok((staged, empty))
}

/// The `score` handler: plans or scores a chunk; a failure that ends the job fails the scoring
/// job (and its evaluation).
pub async fn handle_score(
    state: &WorkerState,
    ctx: &JobContext,
    args: ScoreArgs,
) -> Result<serde_json::Value, JobError> {
    let Some(job) = store::get(&state.pool, args.scoring_job_id).await? else {
        return Err(ScoringError::Invalid(format!(
            "scoring job {} no longer exists",
            args.scoring_job_id
        ))
        .into());
    };
    let result = match args.chunk {
        None => run_plan(state, ctx, job).await,
        Some(chunk) => super::chunk::run_chunk(state, ctx, job, chunk).await,
    }
    .map_err(JobError::from);
    if let Err(e) = &result {
        tracing::warn!(job = %ctx.id, scoring_job = %args.scoring_job_id, chunk = ?args.chunk, error = %e, "score failed");
        store::fail_if_final(ctx, args.scoring_job_id, e).await;
    }
    result
}

/// The `score` kind's registration: cancelling any job of a scoring job cancels it whole (a
/// scoring job missing one chunk can never finish), with its evaluation; retrying one puts the
/// scoring job back to running and its other failed jobs back in the queue with it.
pub struct ScoreJob;

impl crate::job_kind::RegisteredKind for ScoreJob {
    const KIND: JobKind = JobKind::Score;
    type Args = ScoreArgs;

    fn handle(
        state: &WorkerState,
        ctx: &JobContext,
        args: ScoreArgs,
    ) -> impl std::future::Future<Output = Result<serde_json::Value, JobError>> + Send {
        handle_score(state, ctx, args)
    }

    async fn cancelled(
        pool: &sqlx::PgPool,
        job: &queue::JobView,
    ) -> Result<(), crate::job_kind::LifecycleError> {
        if let Some(scoring_job) = job.scoring_job_id {
            store::cancel(pool, scoring_job).await?;
        }
        Ok(())
    }

    async fn retrying(
        conn: &mut sqlx::PgConnection,
        job: &queue::JobView,
    ) -> Result<(), crate::job_kind::LifecycleError> {
        if let Some(scoring_job) = job.scoring_job_id {
            store::job_retrying(conn, scoring_job).await?;
        }
        Ok(())
    }

    async fn retried(
        conn: &mut sqlx::PgConnection,
        job: &queue::JobView,
    ) -> Result<(), crate::job_kind::LifecycleError> {
        if let Some(scoring_job) = job.scoring_job_id {
            store::retry_failed_jobs(conn, scoring_job).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::chunk_size;

    #[test]
    fn small_jobs_are_shared_and_large_ones_use_the_configured_size() {
        assert_eq!(chunk_size(100_000, 1000), 1000);
        assert_eq!(chunk_size(905, 1000), 114);
        assert_eq!(chunk_size(300, 1000), 100);
        assert_eq!(chunk_size(600, 50), 50);
        assert_eq!(chunk_size(0, 1000), 100);
        assert_eq!(chunk_size(10, 0), 1);
    }
}
