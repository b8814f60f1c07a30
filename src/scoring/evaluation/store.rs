//! The evaluations' SQL: the rows of `evaluations` and `evaluation_disagreements`, what the
//! scoring jobs' outcomes do to them, cancelling, and the reads and writes of the `evaluate`
//! job. Scoring jobs are created, checked and cancelled through `scoring::store`.
use std::collections::HashMap;

use serde_json::json;
use sqlx::{PgConnection, PgPool, Row};
use trainyard_jobs::{EvaluateArgs, JobKind};
use uuid::Uuid;

use super::compute::EvalRecord;
use super::{Disagreement, EvaluationRow, EvaluationStatus, NewEvaluation};
use crate::queue::{self, NewJob};
use crate::scoring::store::{self as scoring_jobs_store, NewScoringJob};
use crate::scoring::{ScoringError, ScoringTarget};

fn evaluation_row(r: &sqlx::postgres::PgRow) -> Result<EvaluationRow, sqlx::Error> {
    Ok(EvaluationRow {
        id: r.try_get("id")?,
        model_name: r.try_get("model_name")?,
        versions: r.try_get("versions")?,
        dataset_id: r.try_get("dataset_id")?,
        split: r.try_get("split")?,
        status: r.try_get("status")?,
        run_id: r.try_get("run_id")?,
        promotion: r.try_get("promotion")?,
        results: r.try_get("results")?,
        disagreements: r.try_get("disagreements")?,
        evaluate_job_id: r.try_get("evaluate_job_id")?,
        error: r.try_get("error")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        finished_at: r.try_get("finished_at")?,
    })
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<EvaluationRow>, ScoringError> {
    Ok(sqlx::query("SELECT * FROM evaluations WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?
        .map(|r| evaluation_row(&r))
        .transpose()?)
}

pub async fn list(
    pool: &PgPool,
    limit: i64,
    offset: i64,
) -> Result<(Vec<EvaluationRow>, i64), ScoringError> {
    let rows =
        sqlx::query("SELECT * FROM evaluations ORDER BY created_at DESC, id LIMIT $1 OFFSET $2")
            .bind(limit)
            .bind(offset)
            .fetch_all(pool)
            .await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM evaluations")
        .fetch_one(pool)
        .await?;
    let items = rows.iter().map(evaluation_row).collect::<Result<_, _>>()?;
    Ok((items, total))
}

/// The scoring jobs of an evaluation, one per version, in version order.
pub async fn scoring_jobs(pool: &PgPool, id: Uuid) -> Result<Vec<Uuid>, ScoringError> {
    Ok(
        sqlx::query_scalar("SELECT id FROM scoring_jobs WHERE evaluation_id = $1 ORDER BY version")
            .bind(id)
            .fetch_all(pool)
            .await?,
    )
}

pub async fn disagreements(
    pool: &PgPool,
    id: Uuid,
    limit: i64,
    offset: i64,
) -> Result<(Vec<Disagreement>, i64), ScoringError> {
    let rows = sqlx::query(
        "SELECT position, document_id, source, external_id, text, labels, predictions
         FROM evaluation_disagreements WHERE evaluation_id = $1
         ORDER BY position LIMIT $2 OFFSET $3",
    )
    .bind(id)
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?;
    let total: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM evaluation_disagreements WHERE evaluation_id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await?;
    let items = rows
        .iter()
        .map(|r| Disagreement {
            position: r.get("position"),
            document_id: r.get("document_id"),
            source: r.get("source"),
            external_id: r.get("external_id"),
            text: r.get("text"),
            labels: r.get("labels"),
            predictions: r.get("predictions"),
        })
        .collect();
    Ok((items, total))
}

/// Inserts the evaluation and one scoring job per version (each with its plan job) in one
/// transaction. For a run's gate, an evaluation that already exists is returned as it is.
pub async fn create(
    pool: &PgPool,
    new: &NewEvaluation<'_>,
    max_attempts: i32,
) -> Result<Uuid, ScoringError> {
    let mut tx = pool.begin().await?;
    let id: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO evaluations (id, model_name, versions, dataset_id, split, run_id, promotion)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (run_id) DO NOTHING RETURNING id",
    )
    .bind(Uuid::new_v4())
    .bind(new.model_name)
    .bind(new.versions.iter().map(|v| v.0).collect::<Vec<_>>())
    .bind(new.dataset_id)
    .bind(new.split)
    .bind(new.run_id)
    .bind(new.promotion.as_ref().map(|p| json!(p)))
    .fetch_optional(&mut *tx)
    .await?;
    let Some(id) = id else {
        let existing: Uuid = sqlx::query_scalar("SELECT id FROM evaluations WHERE run_id = $1")
            .bind(new.run_id)
            .fetch_one(&mut *tx)
            .await?;
        return Ok(existing);
    };
    let target = ScoringTarget::Dataset {
        dataset_id: new.dataset_id,
        split: Some(new.split.to_string()),
    };
    for (version, meta) in new.versions {
        scoring_jobs_store::create_in(
            &mut tx,
            &NewScoringJob {
                model_name: new.model_name,
                version: *version,
                labels: &meta.labels,
                thresholds: &meta.thresholds,
                threshold_source: "stored",
                target: &target,
                evaluation_id: Some(id),
            },
            max_attempts,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(id)
}

/// One of the evaluation's scoring jobs is done: when every one is, moves the evaluation on and
/// enqueues its `evaluate` job (once). True when it did.
pub(super) async fn start_if_scored(
    conn: &mut PgConnection,
    evaluation_id: Uuid,
    max_attempts: i32,
) -> Result<bool, ScoringError> {
    // The row lock orders concurrent finishers: the later one sees the earlier one's commit.
    let status: Option<EvaluationStatus> =
        sqlx::query_scalar("SELECT status FROM evaluations WHERE id = $1 FOR UPDATE")
            .bind(evaluation_id)
            .fetch_optional(&mut *conn)
            .await?;
    if status != Some(EvaluationStatus::Scoring) {
        return Ok(false);
    }
    let unfinished: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM scoring_jobs WHERE evaluation_id = $1 AND status <> 'done'",
    )
    .bind(evaluation_id)
    .fetch_one(&mut *conn)
    .await?;
    if unfinished > 0 {
        return Ok(false);
    }
    let ids = queue::enqueue(
        conn,
        vec![NewJob {
            kind: JobKind::Evaluate,
            args: EvaluateArgs { evaluation_id },
            dataset_id: None,
            scoring_job_id: None,
            progress_total: 1,
        }],
        max_attempts,
    )
    .await?;
    sqlx::query(
        "UPDATE evaluations SET status = 'evaluating', evaluate_job_id = $2, updated_at = now() WHERE id = $1",
    )
    .bind(evaluation_id)
    .bind(&ids[0])
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

/// A scoring job of the evaluation failed for good: so does the evaluation, unless it ended.
pub(super) async fn scoring_failed(
    conn: &mut PgConnection,
    evaluation_id: Uuid,
    error: &str,
) -> Result<bool, ScoringError> {
    let failed = sqlx::query(
        "UPDATE evaluations SET status = 'failed', error = $2, updated_at = now(), finished_at = now()
         WHERE id = $1 AND status NOT IN ('done', 'cancelled')",
    )
    .bind(evaluation_id)
    .bind(error)
    .execute(&mut *conn)
    .await?;
    Ok(failed.rows_affected() > 0)
}

/// A failed scoring job of the evaluation runs again: a failed evaluation is scoring again.
pub(super) async fn scoring_again(
    conn: &mut PgConnection,
    evaluation_id: Uuid,
) -> Result<bool, ScoringError> {
    let reopened = sqlx::query(
        "UPDATE evaluations SET status = 'scoring', error = NULL, finished_at = NULL, updated_at = now()
         WHERE id = $1 AND status = 'failed'",
    )
    .bind(evaluation_id)
    .execute(&mut *conn)
    .await?;
    Ok(reopened.rows_affected() > 0)
}

/// Cancels an evaluation that has not finished, with its scoring jobs and its `evaluate` job.
pub async fn cancel(pool: &PgPool, id: Uuid) -> Result<bool, ScoringError> {
    let mut tx = pool.begin().await?;
    let changed = cancel_in(&mut tx, id).await?;
    tx.commit().await?;
    Ok(changed)
}

/// An `evaluate` job was cancelled: so is its evaluation (if it is still unfinished).
pub async fn evaluate_job_cancelled(pool: &PgPool, job_id: &str) -> Result<(), ScoringError> {
    let evaluation: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM evaluations WHERE evaluate_job_id = $1")
            .bind(job_id)
            .fetch_optional(pool)
            .await?;
    if let Some(evaluation) = evaluation {
        cancel(pool, evaluation).await?;
    }
    Ok(())
}

/// A failed `evaluate` job goes back in its queue (in the caller's transaction): its
/// evaluation is evaluating again. Only a failed evaluation's job is retried.
pub async fn evaluate_job_retrying(
    conn: &mut PgConnection,
    job_id: &str,
) -> Result<(), ScoringError> {
    scoring_jobs_store::only_failed(conn, "evaluations", "evaluate_job_id", job_id, "evaluation")
        .await?;
    sqlx::query(
        "UPDATE evaluations SET status = 'evaluating', error = NULL, finished_at = NULL, updated_at = now()
         WHERE evaluate_job_id = $1",
    )
    .bind(job_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// [`cancel`] inside the caller's transaction. Locks the scoring jobs before the evaluation, the
/// order in which a finishing chunk takes them, so the two never deadlock.
pub(super) async fn cancel_in(conn: &mut PgConnection, id: Uuid) -> Result<bool, ScoringError> {
    let jobs: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM scoring_jobs WHERE evaluation_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(&mut *conn)
            .await?;
    let scoring_cancelled = scoring_jobs_store::lock_and_cancel(conn, &jobs).await?;
    let evaluate_job: Option<Option<String>> = sqlx::query_scalar(
        "UPDATE evaluations SET status = 'cancelled', updated_at = now(), finished_at = now()
         WHERE id = $1 AND status IN ('scoring', 'evaluating') RETURNING evaluate_job_id",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(evaluate_job) = evaluate_job else {
        return Ok(scoring_cancelled);
    };
    if let Some(job) = evaluate_job {
        queue::cancel_job_in(conn, &job).await?;
    }
    Ok(true)
}

/// The records of a dataset split whose document still exists, in record order.
pub(super) async fn records(
    pool: &PgPool,
    dataset_id: Uuid,
    split: &str,
) -> Result<Vec<EvalRecord>, ScoringError> {
    let rows = sqlx::query(
        "SELECT r.position, r.document_id, r.source, r.external_id, r.text, r.checksum, r.labels
         FROM dataset_records r JOIN documents d ON d.id = r.document_id
         WHERE r.dataset_id = $1 AND r.split = $2 ORDER BY r.position",
    )
    .bind(dataset_id)
    .bind(split)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| EvalRecord {
            position: r.get("position"),
            document_id: r.get("document_id"),
            source: r.get("source"),
            external_id: r.get("external_id"),
            text: r.get("text"),
            checksum: r.get("checksum"),
            labels: serde_json::from_value(r.get("labels")).unwrap_or_default(),
        })
        .collect())
}

/// The versions an evaluation compares (one per scoring job), in version order: each with the
/// labels and the thresholds it was scored with.
pub(super) async fn compared_versions(
    pool: &PgPool,
    evaluation_id: Uuid,
) -> Result<Vec<(i32, Vec<String>, Vec<f32>)>, ScoringError> {
    let jobs = sqlx::query(
        "SELECT version, labels, thresholds FROM scoring_jobs WHERE evaluation_id = $1 ORDER BY version",
    )
    .bind(evaluation_id)
    .fetch_all(pool)
    .await?;
    Ok(jobs
        .iter()
        .map(|job| (job.get("version"), job.get("labels"), job.get("thresholds")))
        .collect())
}

/// A version's stored scores of these documents, keyed by (document, checksum of the text
/// scored).
pub(super) async fn stored_scores(
    pool: &PgPool,
    model_name: &str,
    version: i32,
    document_ids: &[i64],
) -> Result<HashMap<(i64, String), Vec<f32>>, ScoringError> {
    Ok(sqlx::query(
        "SELECT document_id, checksum, scores FROM document_scores
         WHERE model_name = $1 AND version = $2 AND document_id = ANY($3)",
    )
    .bind(model_name)
    .bind(version)
    .bind(document_ids)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| ((r.get("document_id"), r.get("checksum")), r.get("scores")))
    .collect())
}

/// Locks the evaluation's row (in the transaction that writes its results) and reads its
/// status.
pub(super) async fn lock_status(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<EvaluationStatus, ScoringError> {
    Ok(
        sqlx::query_scalar("SELECT status FROM evaluations WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_one(&mut *conn)
            .await?,
    )
}

/// Replaces the evaluation's disagreements: each record with the versions' predictions.
pub(super) async fn replace_disagreements(
    conn: &mut PgConnection,
    id: Uuid,
    disagreements: &[(&EvalRecord, serde_json::Value)],
) -> Result<(), ScoringError> {
    sqlx::query("DELETE FROM evaluation_disagreements WHERE evaluation_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    for block in disagreements.chunks(5000) {
        sqlx::query(
            "INSERT INTO evaluation_disagreements (evaluation_id, position, document_id, source, external_id, text, labels, predictions)
             SELECT $1, * FROM UNNEST($2::int[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::jsonb[], $8::jsonb[])",
        )
        .bind(id)
        .bind(block.iter().map(|d| d.0.position).collect::<Vec<_>>())
        .bind(block.iter().map(|d| d.0.document_id).collect::<Vec<_>>())
        .bind(block.iter().map(|d| d.0.source.as_str()).collect::<Vec<_>>())
        .bind(block.iter().map(|d| d.0.external_id.as_str()).collect::<Vec<_>>())
        .bind(block.iter().map(|d| d.0.text.as_str()).collect::<Vec<_>>())
        .bind(block.iter().map(|d| json!(d.0.labels)).collect::<Vec<_>>())
        .bind(block.iter().map(|d| d.1.clone()).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The evaluation is done: its results, its count of disagreements and (when it has a gate) the
/// gate as decided.
pub(super) async fn finish(
    conn: &mut PgConnection,
    id: Uuid,
    results: &serde_json::Value,
    disagreements: i32,
    promotion: Option<serde_json::Value>,
) -> Result<(), ScoringError> {
    sqlx::query(
        "UPDATE evaluations SET status = 'done', results = $2, disagreements = $3, promotion = coalesce($4, promotion),
                updated_at = now(), finished_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(results)
    .bind(disagreements)
    .bind(promotion)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The `evaluate` job was cancelled while the evaluation was evaluating.
pub(super) async fn mark_cancelled(pool: &PgPool, id: Uuid) -> Result<(), ScoringError> {
    sqlx::query(
        "UPDATE evaluations SET status = 'cancelled', updated_at = now(), finished_at = now()
         WHERE id = $1 AND status = 'evaluating'",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

/// The `evaluate` job failed for good: so does the evaluation, unless it has ended.
pub(super) async fn mark_failed(pool: &PgPool, id: Uuid, error: &str) -> Result<(), ScoringError> {
    sqlx::query(
        "UPDATE evaluations SET status = 'failed', error = $2, updated_at = now(), finished_at = now()
         WHERE id = $1 AND status NOT IN ('done', 'cancelled')",
    )
    .bind(id)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

/// The model's served version, its row locked until the gate's transaction ends.
pub(super) async fn served_version_for_update(
    conn: &mut PgConnection,
    model: &str,
) -> Result<Option<i32>, ScoringError> {
    Ok(
        sqlx::query_scalar("SELECT served_version FROM models WHERE name = $1 FOR UPDATE")
            .bind(model)
            .fetch_optional(&mut *conn)
            .await?
            .flatten(),
    )
}
