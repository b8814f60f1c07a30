//! The `evaluate` job: reads the records of the evaluation's split and each version's scores
//! of them, computes the versions' figures and disagreements, and writes them with the gate's
//! decision in one transaction, guarded by the evaluation's status.
use std::collections::HashMap;

use serde_json::json;
use trainyard_jobs::EvaluateArgs;

use super::compute::{self, Side};
use super::{gate, store, EvaluationStatus, PromotionGate};
use crate::queue::{JobContext, JobError};
use crate::scoring::ScoringError;
use crate::worker_state::WorkerState;

/// The `evaluate` handler.
pub async fn handle_evaluate(
    state: &WorkerState,
    ctx: &JobContext,
    args: EvaluateArgs,
) -> Result<serde_json::Value, JobError> {
    let result = run_evaluate(state, ctx, &args)
        .await
        .map_err(JobError::from);
    if let Err(e) = &result {
        tracing::warn!(job = %ctx.id, evaluation = %args.evaluation_id, error = %e, "evaluate failed");
        if matches!(e, JobError::Cancelled) {
            let _ = store::mark_cancelled(&state.pool, args.evaluation_id).await;
        } else if ctx.is_last_attempt(e).await {
            let error = format!("job {} failed: {e}", ctx.id);
            let _ = store::mark_failed(&state.pool, args.evaluation_id, &error).await;
        }
    }
    result
}

async fn run_evaluate(
    state: &WorkerState,
    ctx: &JobContext,
    args: &EvaluateArgs,
) -> Result<serde_json::Value, ScoringError> {
    let pool = &state.pool;
    let evaluation = store::get(pool, args.evaluation_id).await?.ok_or_else(|| {
        ScoringError::Invalid(format!(
            "evaluation {} no longer exists",
            args.evaluation_id
        ))
    })?;
    match evaluation.status {
        EvaluationStatus::Cancelled => return Err(ScoringError::Cancelled),
        EvaluationStatus::Done | EvaluationStatus::Failed => {
            return Ok(json!({"evaluation_id": evaluation.id, "status": evaluation.status}))
        }
        _ => {}
    }
    if ctx.cancel_requested() {
        return Err(ScoringError::Cancelled);
    }
    let records = store::records(pool, evaluation.dataset_id, &evaluation.split).await?;
    let ids: Vec<i64> = records.iter().map(|r| r.document_id).collect();
    let mut sides = Vec::new();
    for (version, labels, thresholds) in store::compared_versions(pool, evaluation.id).await? {
        // Scores of the records' own texts (the key holds the text's checksum).
        let stored = store::stored_scores(pool, &evaluation.model_name, version, &ids).await?;
        let scores = compute::scores_of(&records, &stored).map_err(|missing| {
            ScoringError::Invalid(format!(
                "version {version} has no score for {missing} of the {} records",
                records.len()
            ))
        })?;
        sides.push(Side {
            version,
            labels,
            thresholds,
            scores,
        });
    }

    if let Some(side) = compute::unannotated(&records, &sides) {
        return Err(ScoringError::Invalid(format!(
            "no record of the {} split of dataset {} annotates a label of version {} ({:?}): nothing to evaluate on",
            evaluation.split, evaluation.dataset_id, side.version, side.labels
        )));
    }
    let mut results = Vec::new();
    let mut macro_f1 = HashMap::new();
    for side in &sides {
        let result = compute::version_result(&records, side);
        macro_f1.insert(side.version, result.macro_f1);
        results.push(result.json);
    }
    let disagreements = compute::disagreements(&records, &sides);

    let mut tx = pool.begin().await?;
    let status = store::lock_status(&mut tx, evaluation.id).await?;
    if status != EvaluationStatus::Evaluating {
        return match status {
            EvaluationStatus::Cancelled => Err(ScoringError::Cancelled),
            _ => Ok(json!({"evaluation_id": evaluation.id, "status": status})),
        };
    }
    store::replace_disagreements(&mut tx, evaluation.id, &disagreements).await?;
    let promotion = match &evaluation.promotion {
        Some(stored) => {
            let stored: PromotionGate = serde_json::from_value(stored.clone()).map_err(|e| {
                ScoringError::Invalid(format!("stored promotion gate unreadable: {e}"))
            })?;
            Some(gate::apply(&mut tx, &evaluation.model_name, stored, &macro_f1).await?)
        }
        None => None,
    };
    store::finish(
        &mut tx,
        evaluation.id,
        &json!({"versions": results}),
        disagreements.len() as i32,
        promotion.as_ref().map(|p| json!(p)),
    )
    .await?;
    ctx.progress_one_of_one(&mut tx).await?;
    tx.commit().await?;
    tracing::info!(evaluation = %evaluation.id, records = records.len(), disagreements = disagreements.len(), "evaluation done");
    Ok(json!({
        "evaluation_id": evaluation.id,
        "records": records.len(),
        "disagreements": disagreements.len(),
        "promotion": promotion,
    }))
}

/// The `evaluate` kind's registration: cancelling its job cancels the evaluation; retrying it
/// computes the evaluation again.
pub struct EvaluateJob;

impl crate::job_kind::RegisteredKind for EvaluateJob {
    const KIND: trainyard_jobs::JobKind = trainyard_jobs::JobKind::Evaluate;
    type Args = trainyard_jobs::EvaluateArgs;

    fn handle(
        state: &crate::worker_state::WorkerState,
        ctx: &crate::queue::JobContext,
        args: trainyard_jobs::EvaluateArgs,
    ) -> impl std::future::Future<Output = Result<serde_json::Value, crate::queue::JobError>> + Send
    {
        handle_evaluate(state, ctx, args)
    }

    async fn cancelled(
        pool: &sqlx::PgPool,
        job: &crate::queue::JobView,
    ) -> Result<(), crate::job_kind::LifecycleError> {
        super::evaluate_job_cancelled(pool, &job.id).await?;
        Ok(())
    }

    async fn retrying(
        conn: &mut sqlx::PgConnection,
        job: &crate::queue::JobView,
    ) -> Result<(), crate::job_kind::LifecycleError> {
        super::evaluate_job_retrying(conn, &job.id).await?;
        Ok(())
    }
}
