//! One chunk of a scoring job (a `score` job with a chunk): runs the model version on this
//! worker and upserts the documents' scores.
//!
//! Idempotent: scores are unique per (model, version, document, text checksum); the chunk is marked done and
//! the job's counter advanced in the same transaction, guarded by `NOT done`, so a chunk
//! counts once however often it runs (after a kill, a retry). The transaction that completes
//! the last chunk finishes the job and reports it to the evaluation it may belong to, which
//! enqueues its `evaluate` job once its other versions are scored.
use serde_json::json;
use sqlx::Row;

use super::store::{self, ScoringJobOutcome, ScoringJobRow};
use super::ScoringError;
use crate::embedding::store::begin_batch_write;
use crate::inference::LoadError;
use crate::queue::JobContext;
use crate::worker_state::WorkerState;

/// Texts scored between two progress updates and cancel checks (about a second of the local
/// model on one core for short texts).
const SLICE: usize = 256;

pub async fn run_chunk(
    state: &WorkerState,
    ctx: &JobContext,
    job: ScoringJobRow,
    chunk_no: i32,
) -> Result<serde_json::Value, ScoringError> {
    let pool = &state.pool;
    if job.status == super::store::ScoringStatus::Cancelled || ctx.cancel_requested() {
        return Err(ScoringError::Cancelled);
    }
    let row = sqlx::query(
        "SELECT document_ids, checksums, texts, done FROM scoring_chunks
         WHERE scoring_job_id = $1 AND chunk_no = $2",
    )
    .bind(job.id)
    .bind(chunk_no)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| {
        ScoringError::Invalid(format!(
            "chunk {chunk_no} of scoring job {} does not exist",
            job.id
        ))
    })?;
    if row.get::<bool, _>("done") {
        return Ok(json!({"chunk": chunk_no, "already_done": true}));
    }
    let document_ids: Vec<i64> = row.get("document_ids");
    let checksums: Vec<String> = row.get("checksums");
    let texts: Vec<String> = row.get("texts");

    let model = state
        .scorers
        .get(pool, &state.settings, &job.model_name, job.version)
        .await
        .map_err(|e| match e {
            LoadError::DatabaseUnavailable(m) => ScoringError::Transient(m),
            LoadError::Broken(m) => ScoringError::Invalid(format!(
                "version {} of `{}` cannot be loaded: {m}",
                job.version, job.model_name
            )),
        })?;
    let width = model.spec.labels.len();
    if model.spec.labels != job.labels {
        return Err(ScoringError::Invalid(format!(
            "version {} of `{}` has labels {:?}, the scoring job expects {:?}",
            job.version, job.model_name, model.spec.labels, job.labels
        )));
    }
    let span = tracing::info_span!(
        "score_chunk",
        model = %job.model_name,
        model.version = job.version,
        chunk = chunk_no,
        texts = texts.len(),
    );
    let mut flat: Vec<f32> = Vec::with_capacity(texts.len() * width);
    for slice in texts.chunks(SLICE) {
        if ctx.stopping.is_set() {
            return Err(ScoringError::Interrupted);
        }
        let scores = {
            use tracing::Instrument;
            model
                .scores(slice.to_vec())
                .instrument(span.clone())
                .await
                .map_err(ScoringError::Transient)?
        };
        if scores.len() != slice.len() || scores.iter().any(|s| s.len() != width) {
            return Err(ScoringError::Invalid(format!(
                "the model returned {} score rows for {} texts",
                scores.len(),
                slice.len()
            )));
        }
        flat.extend(scores.into_iter().flatten());
        ctx.set_progress((flat.len() / width.max(1)) as i64, None);
        if ctx.cancel_requested() {
            return Err(ScoringError::Cancelled);
        }
    }
    crate::telemetry::metrics().documents_scored.add(
        texts.len() as u64,
        &[crate::telemetry::instruments::model(&job.model_name)],
    );

    // Committed asynchronously, like an embed batch: durable no later than the job's
    // acknowledgement; a crash in between loses the scores and the done mark together.
    let mut tx = begin_batch_write(pool).await?;
    sqlx::query(
        "INSERT INTO document_scores (model_name, version, document_id, checksum, scores)
         SELECT $1, $2, t.document_id, t.checksum, p.flat[(t.n - 1) * p.width + 1 : t.n * p.width]
         FROM UNNEST($3::bigint[], $4::text[]) WITH ORDINALITY AS t(document_id, checksum, n),
              (SELECT $5::real[] AS flat, $6::int AS width) p
         ON CONFLICT (model_name, version, document_id, checksum) DO NOTHING",
    )
    .bind(&job.model_name)
    .bind(job.version)
    .bind(&document_ids)
    .bind(&checksums)
    .bind(&flat)
    .bind(width as i32)
    .execute(&mut *tx)
    .await?;
    let first_time = sqlx::query(
        "UPDATE scoring_chunks SET done = true WHERE scoring_job_id = $1 AND chunk_no = $2 AND NOT done",
    )
    .bind(job.id)
    .bind(chunk_no)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    let mut finished = false;
    if first_time {
        let (done, total): (i32, i32) = sqlx::query_as(
            "UPDATE scoring_jobs SET chunks_done = chunks_done + 1, scored = scored + $2, updated_at = now()
             WHERE id = $1 RETURNING chunks_done, chunks_total",
        )
        .bind(job.id)
        .bind(texts.len() as i64)
        .fetch_one(&mut *tx)
        .await?;
        if done >= total {
            finished = sqlx::query(
                "UPDATE scoring_jobs SET status = 'done', finished_at = now() WHERE id = $1 AND status = 'scoring'",
            )
            .bind(job.id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if finished {
                let max_attempts = state.settings.queue.max_attempts;
                store::report(
                    &mut tx,
                    job.evaluation_id,
                    ScoringJobOutcome::Succeeded { max_attempts },
                )
                .await?;
            }
        }
    }
    ctx.progress_complete(&mut tx).await?;
    tx.commit().await?;
    if finished {
        tracing::info!(scoring_job = %job.id, "scoring job done");
    }
    Ok(json!({"chunk": chunk_no, "texts": texts.len(), "scoring_job_done": finished}))
}
