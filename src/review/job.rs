//! The `review_rank` job: computes one ranking of the review queue outside the request
//! (`suspect_label`, whose out-of-fold fits take longer than a request should, and any
//! strategy on a source past `review.inline_max_documents`). A request
//! that finds no ranking of the current data writes a `computing` row and enqueues the job in
//! one transaction; a partial unique index keeps one `computing` row (one job) per key. The
//! job turns its row into the ranking; its last failed attempt marks the row `failed`.
use serde_json::json;
use sqlx::PgPool;
use trainyard_jobs::{JobKind, ReviewRankArgs};

use super::store::{self, RankingKey, RankingState};
use super::{ReviewError, Strategy};
use crate::config::Settings;
use crate::queue::{self, JobContext, JobError, NewJob};
use crate::worker_state::WorkerState;

/// The job computing the ranking of `key`: the running one, or a new one for `fingerprint`.
/// A job that ended without turning its row into a ranking (cancelled, failed, lost) frees
/// the key; a failed ranking of this very fingerprint is an error until the data change.
pub async fn ensure(
    pool: &PgPool,
    key: &RankingKey,
    fingerprint: &str,
    settings: &Settings,
) -> Result<String, ReviewError> {
    let mut tx = pool.begin().await?;
    store::lock_key(&mut tx, key, "enqueue").await?;
    if let Some(computing) = store::find(&mut tx, key, RankingState::Computing).await? {
        let job_id = computing.job_id.clone().unwrap_or_default();
        let alive = match queue::get_job(pool, &job_id).await {
            Ok(job) => !job.status.is_final(),
            Err(queue::QueueError::NotFound(_)) => false,
            Err(queue::QueueError::Database(e)) => return Err(e.into()),
            Err(e) => return Err(ReviewError::Internal(e.to_string())),
        };
        if alive {
            tx.commit().await?;
            return Ok(job_id);
        }
        sqlx::query(
            "UPDATE review_rankings SET status = 'failed',
                    error = 'its job ended without a ranking' WHERE id = $1 AND status = 'computing'",
        )
        .bind(computing.id)
        .execute(&mut *tx)
        .await?;
    }
    if let Some(failed) = store::find(&mut tx, key, RankingState::Failed).await? {
        if failed.fingerprint == fingerprint {
            tx.commit().await?;
            return Err(ReviewError::JobFailed {
                job_id: failed.job_id.unwrap_or_default(),
            });
        }
    }
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO review_rankings (model_name, version, strategy, source, label, fingerprint, status)
         VALUES ($1, $2, $3, $4, $5, $6, 'computing') RETURNING id",
    )
    .bind(&key.model)
    .bind(key.version)
    .bind(key.strategy.as_str())
    .bind(key.source_key())
    .bind(key.label_key())
    .bind(fingerprint)
    .fetch_one(&mut *tx)
    .await?;
    let ids = queue::enqueue(
        &mut tx,
        vec![NewJob {
            kind: JobKind::ReviewRank,
            args: ReviewRankArgs { ranking_id: id },
            dataset_id: None,
            scoring_job_id: None,
            progress_total: 1,
        }],
        settings.queue.max_attempts,
    )
    .await
    .map_err(|e| match e {
        queue::QueueError::Database(e) => ReviewError::Database(e),
        other => ReviewError::Internal(other.to_string()),
    })?;
    sqlx::query("UPDATE review_rankings SET job_id = $2 WHERE id = $1")
        .bind(id)
        .bind(&ids[0])
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(ids[0].clone())
}

/// Runs a `review_rank` job.
pub async fn handle_review_rank(
    state: &WorkerState,
    ctx: &JobContext,
    args: ReviewRankArgs,
) -> Result<serde_json::Value, JobError> {
    let result = run(state, ctx, &args).await;
    if let Err(e) = &result {
        tracing::warn!(job = %ctx.id, ranking = args.ranking_id, error = %e, "review_rank failed");
        if ctx.is_last_attempt(e).await {
            let _ = sqlx::query(
                "UPDATE review_rankings SET status = 'failed', error = $2
                 WHERE id = $1 AND status = 'computing'",
            )
            .bind(args.ranking_id)
            .bind(format!("job {} failed: {e}", ctx.id))
            .execute(&state.pool)
            .await;
        }
    }
    result
}

async fn run(
    state: &WorkerState,
    ctx: &JobContext,
    args: &ReviewRankArgs,
) -> Result<serde_json::Value, JobError> {
    let pool = &state.pool;
    let row: Option<(String, i32, String, String, String, RankingState)> = sqlx::query_as(
        "SELECT model_name, version, strategy, source, label, status
         FROM review_rankings WHERE id = $1",
    )
    .bind(args.ranking_id)
    .fetch_optional(pool)
    .await?;
    let Some((model, version, strategy, source, label, status)) = row else {
        return Ok(json!({"ranking_id": args.ranking_id, "skipped": "the ranking row is gone"}));
    };
    if status != RankingState::Computing {
        return Ok(
            json!({"ranking_id": args.ranking_id, "skipped": format!("the ranking is {status}")}),
        );
    }
    if ctx.cancel_requested() {
        return Err(JobError::Cancelled);
    }
    let strategy = Strategy::from_name(&strategy)
        .ok_or_else(|| JobError::Fatal(format!("unknown strategy `{strategy}`")))?;
    let version = super::resolve_version(pool, &model, Some(version))
        .await
        .map_err(job_error)?;
    let key = RankingKey {
        model,
        version: version.version,
        strategy,
        source: (!source.is_empty()).then_some(source),
        label: (!label.is_empty()).then_some(label),
    };
    let ranking = super::compute(
        pool,
        &state.settings,
        &version,
        &key,
        Some(args.ranking_id),
        true,
    )
    .await
    .map_err(job_error)?
    .ok_or_else(|| JobError::Retryable("the ranking's key was busy".into()))?;
    Ok(
        json!({"ranking_id": ranking.id, "total": ranking.total, "fingerprint": ranking.fingerprint}),
    )
}

fn job_error(e: ReviewError) -> JobError {
    match e {
        ReviewError::Database(e) => e.into(),
        ReviewError::Busy => JobError::Retryable(e.to_string()),
        other => JobError::Fatal(other.to_string()),
    }
}

/// The `review_rank` kind's registration: its job's last failed attempt marks its ranking
/// failed (in the handler); cancelling or retrying it touches nothing else.
pub struct ReviewRankJob;

impl crate::job_kind::RegisteredKind for ReviewRankJob {
    const KIND: JobKind = JobKind::ReviewRank;
    type Args = ReviewRankArgs;

    fn handle(
        state: &WorkerState,
        ctx: &JobContext,
        args: ReviewRankArgs,
    ) -> impl std::future::Future<Output = Result<serde_json::Value, JobError>> + Send {
        handle_review_rank(state, ctx, args)
    }
}
