//! The plan of a scoring job (a `score` job without a chunk): selects the documents, keeps
//! those whose score for the version on this very text (checksum) is missing, and fans them
//! out as chunks.
//!
//! Idempotent: the membership, the chunks and their jobs are written in one transaction under
//! the scoring job's row lock, guarded by its status; a re-run after that commit only reports.
use std::collections::HashSet;

use serde_json::json;
use sqlx::Row;
use trainyard_jobs::{JobKind, ScoreArgs};

use super::store::{self, ScoringJobRow};
use super::ScoringTarget;
use crate::datasets::text::{checksum, combine_text};
use crate::queue::{self, JobContext, JobError, NewJob};
use crate::worker_state::WorkerState;

/// One document to cover: id, text and its checksum.
struct Item {
    document_id: i64,
    text: String,
    checksum: String,
}

pub async fn run_plan(
    state: &WorkerState,
    ctx: &JobContext,
    job: ScoringJobRow,
) -> Result<serde_json::Value, JobError> {
    let pool = &state.pool;
    match job.status.as_str() {
        "cancelled" => return Err(JobError::Cancelled),
        "scoring" | "done" | "failed" => {
            return Ok(json!({"scoring_job_id": job.id, "status": job.status}))
        }
        _ => {}
    }
    if ctx.cancel_requested() {
        return Err(JobError::Cancelled);
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
        .map_err(|e| JobError::Fatal(format!("stored request unreadable: {e}")))?;
    let (items, empty) = select(state, &target).await?;

    // Scores this version already has for these documents, on the same text.
    let ids: Vec<i64> = items.iter().map(|i| i.document_id).collect();
    let stored: HashSet<(i64, String)> = sqlx::query(
        "SELECT document_id, checksum FROM document_scores
         WHERE model_name = $1 AND version = $2 AND document_id = ANY($3)",
    )
    .bind(&job.model_name)
    .bind(job.version)
    .bind(&ids)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| (r.get("document_id"), r.get("checksum")))
    .collect();
    let missing: Vec<&Item> = items
        .iter()
        .filter(|i| !stored.contains(&(i.document_id, i.checksum.clone())))
        .collect();
    let chunk_size = chunk_size(missing.len(), state.settings.scoring.chunk_size);
    let chunks: Vec<&[&Item]> = missing.chunks(chunk_size).collect();

    let mut tx = pool.begin().await?;
    let status: String =
        sqlx::query_scalar("SELECT status FROM scoring_jobs WHERE id = $1 FOR UPDATE")
            .bind(job.id)
            .fetch_one(&mut *tx)
            .await?;
    match status.as_str() {
        "planning" => {}
        "cancelled" => return Err(JobError::Cancelled),
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
    for (block_no, block) in items.chunks(10_000).enumerate() {
        let offset = (block_no * 10_000) as i32;
        sqlx::query(
            "INSERT INTO scoring_job_documents (scoring_job_id, position, document_id, checksum)
             SELECT $1, * FROM UNNEST($2::int[], $3::bigint[], $4::text[])",
        )
        .bind(job.id)
        .bind(
            (0..block.len() as i32)
                .map(|i| offset + i)
                .collect::<Vec<_>>(),
        )
        .bind(block.iter().map(|i| i.document_id).collect::<Vec<_>>())
        .bind(
            block
                .iter()
                .map(|i| i.checksum.as_str())
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await?;
    }
    for (no, chunk) in chunks.iter().enumerate() {
        sqlx::query(
            "INSERT INTO scoring_chunks (scoring_job_id, chunk_no, document_ids, checksums, texts)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(job.id)
        .bind(no as i32)
        .bind(chunk.iter().map(|i| i.document_id).collect::<Vec<_>>())
        .bind(
            chunk
                .iter()
                .map(|i| i.checksum.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(chunk.iter().map(|i| i.text.as_str()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    let jobs: Vec<NewJob<ScoreArgs>> = chunks
        .iter()
        .enumerate()
        .map(|(no, chunk)| NewJob {
            kind: JobKind::Score,
            args: ScoreArgs {
                scoring_job_id: job.id,
                chunk: Some(no as i32),
            },
            dataset_id: None,
            scoring_job_id: Some(job.id),
            progress_total: chunk.len() as i64,
        })
        .collect();
    queue::enqueue(&mut tx, jobs, state.settings.queue.max_attempts).await?;
    let final_status = if chunks.is_empty() { "done" } else { "scoring" };
    sqlx::query(
        "UPDATE scoring_jobs SET status = $2, chunks_total = $3, chunks_done = 0, documents_total = $4,
                excluded_empty_text = $5, scored = 0, reused = $6, updated_at = now(),
                finished_at = CASE WHEN $2 = 'done' THEN now() END
         WHERE id = $1",
    )
    .bind(job.id)
    .bind(final_status)
    .bind(chunks.len() as i32)
    .bind(items.len() as i64)
    .bind(empty as i64)
    .bind((items.len() - missing.len()) as i64)
    .execute(&mut *tx)
    .await?;
    if final_status == "done" {
        if let Some(evaluation) = job.evaluation_id {
            super::evaluation::start_if_scored(&mut tx, evaluation, &state.settings).await?;
        }
    }
    sqlx::query("UPDATE job_info SET progress_done = 1, progress_total = 1 WHERE job_id = $1")
        .bind(&ctx.id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(scoring_job = %job.id, documents = items.len(), to_score = missing.len(), chunks = chunks.len(), "scoring job planned");
    Ok(json!({
        "scoring_job_id": job.id,
        "status": final_status,
        "documents": items.len(),
        "to_score": missing.len(),
        "reused": items.len() - missing.len(),
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

/// The documents a target covers, in a stable order (a dataset's record order; else source and
/// external id, as a dataset orders them), and how many had no text.
async fn select(
    state: &WorkerState,
    target: &ScoringTarget,
) -> Result<(Vec<Item>, usize), JobError> {
    let pool = &state.pool;
    match target {
        ScoringTarget::Dataset { dataset_id, split } => {
            // The records' own texts (as the dataset was built); documents deleted since are
            // left out: there is nothing to attach their score to.
            let rows = sqlx::query(
                "SELECT r.document_id, r.text, r.checksum FROM dataset_records r
                 JOIN documents d ON d.id = r.document_id
                 WHERE r.dataset_id = $1 AND ($2::text IS NULL OR r.split = $2)
                 ORDER BY r.position",
            )
            .bind(dataset_id)
            .bind(split)
            .fetch_all(pool)
            .await?;
            let items = rows
                .iter()
                .map(|r| Item {
                    document_id: r.get("document_id"),
                    text: r.get("text"),
                    checksum: r.get("checksum"),
                })
                .collect();
            Ok((items, 0))
        }
        ScoringTarget::Documents { selection: sel } => {
            let rows = sqlx::query(
                "SELECT d.id, d.title, d.description, d.tags, d.body FROM documents d
                 WHERE d.source = ANY($1) OR d.id = ANY($2) OR (d.source = $3 AND d.external_id = ANY($4))
                 ORDER BY d.source, d.external_id",
            )
            .bind(&sel.sources)
            .bind(&sel.document_ids)
            .bind(&sel.source)
            .bind(&sel.external_ids)
            .fetch_all(pool)
            .await?;
            let max_chars = state.settings.server.max_text_chars;
            let mut empty = 0;
            let mut items = Vec::with_capacity(rows.len());
            for row in &rows {
                let tags: Vec<String> = row.get("tags");
                let text = combine_text(
                    row.get::<Option<&str>, _>("title"),
                    row.get::<Option<&str>, _>("description"),
                    row.get::<Option<&str>, _>("body"),
                    &tags,
                    max_chars,
                );
                if text.is_empty() {
                    empty += 1;
                    continue;
                }
                items.push(Item {
                    document_id: row.get("id"),
                    checksum: checksum(&text),
                    text,
                });
            }
            Ok((items, empty))
        }
    }
}

/// The `score` handler: plans or scores a chunk; a failure that ends the job fails the scoring
/// job (and its evaluation).
pub async fn handle_score(
    state: &WorkerState,
    ctx: &JobContext,
    args: ScoreArgs,
) -> Result<serde_json::Value, JobError> {
    let Some(job) = store::get(&state.pool, args.scoring_job_id).await? else {
        return Err(JobError::Fatal(format!(
            "scoring job {} no longer exists",
            args.scoring_job_id
        )));
    };
    let result = match args.chunk {
        None => run_plan(state, ctx, job).await,
        Some(chunk) => super::chunk::run_chunk(state, ctx, job, chunk).await,
    };
    if let Err(e) = &result {
        tracing::warn!(job = %ctx.id, scoring_job = %args.scoring_job_id, chunk = ?args.chunk, error = %e, "score failed");
        store::fail_if_final(ctx, args.scoring_job_id, e).await;
    }
    result
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
