//! Evaluations: versions of one model scored on the same dataset split, compared label by
//! label at their stored thresholds and at thresholds tuned on that split, with the records on
//! which their decisions differ; and the promotion gate a training run's `auto_promote` can
//! require.
//!
//! An evaluation is one scoring job per version. The transaction that finishes the last of them
//! (under the evaluation's row lock, so two finishing at once cannot both miss it) moves the
//! evaluation to `evaluating` and enqueues the `evaluate` job, which writes the results, the
//! disagreements and the gate's decision in one transaction, guarded by the status.
//!
//! Evaluations depend on `scoring::store` (they create, cancel and check scoring jobs there);
//! the scoring jobs hear nothing of evaluations but call [`on_scoring_job_outcome`], from
//! `scoring::store::report`, in the transaction that changed one of them.
use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{PgConnection, PgPool, Row};
use trainyard_jobs::{EvaluateArgs, JobKind};
use uuid::Uuid;

use super::store::{self, NewScoringJob, ScoringJobOutcome};
use super::{positive_labels, ScoringError, ScoringTarget};
use crate::queue::{self, JobContext, JobError, NewJob};
use crate::registry::VersionMeta;
use crate::training::metrics::{evaluate, tune_thresholds, Metrics};
use crate::worker_state::WorkerState;

/// The metric a promotion gate compares (macro-F1 at each version's stored thresholds: the
/// decisions it would serve).
pub const GATE_METRIC: &str = "macro_f1";

/// A gate: promote `candidate` when its macro-F1 on the evaluation's records beats `against`'s
/// (the version served when the evaluation was asked for) by at least `margin`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromotionGate {
    pub candidate: i32,
    pub against: i32,
    pub margin: f64,
    pub metric: String,
    /// `promoted` | `not_promoted`, once decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone)]
pub struct EvaluationRow {
    pub id: Uuid,
    pub model_name: String,
    pub versions: Vec<i32>,
    pub dataset_id: Uuid,
    pub split: String,
    pub status: String,
    pub run_id: Option<Uuid>,
    pub promotion: Option<serde_json::Value>,
    pub results: Option<serde_json::Value>,
    pub disagreements: Option<i32>,
    pub evaluate_job_id: Option<String>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl EvaluationRow {
    fn from_row(r: &sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
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
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<EvaluationRow>, ScoringError> {
    Ok(sqlx::query("SELECT * FROM evaluations WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?
        .map(|r| EvaluationRow::from_row(&r))
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
    let items = rows
        .iter()
        .map(EvaluationRow::from_row)
        .collect::<Result<_, _>>()?;
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

/// A disagreement as stored: the record, its consensus labels, each version's decision.
#[derive(Debug, Clone, Serialize)]
pub struct Disagreement {
    pub position: i32,
    pub document_id: i64,
    pub source: String,
    pub external_id: String,
    pub text: String,
    pub labels: serde_json::Value,
    pub predictions: serde_json::Value,
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

/// What a new evaluation compares, checked by the caller (versions exist, dataset ready).
pub struct NewEvaluation<'a> {
    pub model_name: &'a str,
    pub versions: &'a [(i32, VersionMeta)],
    pub dataset_id: Uuid,
    pub split: &'a str,
    /// The training run whose gated `auto_promote` asks for it (one evaluation per run).
    pub run_id: Option<Uuid>,
    pub promotion: Option<PromotionGate>,
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
        store::create_in(
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

/// The hook through which a scoring job of the evaluation tells what happened to it, in the
/// transaction that changed it (see `scoring::store::report`, its one caller). Returns whether
/// the evaluation (or, when cancelling, any of its jobs) changed.
pub(super) async fn on_scoring_job_outcome(
    conn: &mut PgConnection,
    evaluation_id: Uuid,
    outcome: ScoringJobOutcome<'_>,
) -> Result<bool, ScoringError> {
    match outcome {
        ScoringJobOutcome::Succeeded { max_attempts } => {
            start_if_scored(conn, evaluation_id, max_attempts).await
        }
        ScoringJobOutcome::Failed { error } => scoring_failed(conn, evaluation_id, error).await,
        ScoringJobOutcome::Cancelled => cancel_in(conn, evaluation_id).await,
        ScoringJobOutcome::Retrying => scoring_again(conn, evaluation_id).await,
    }
}

/// A scoring job of the evaluation failed for good: so does the evaluation, unless it ended.
async fn scoring_failed(
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
async fn scoring_again(conn: &mut PgConnection, evaluation_id: Uuid) -> Result<bool, ScoringError> {
    let reopened = sqlx::query(
        "UPDATE evaluations SET status = 'scoring', error = NULL, finished_at = NULL, updated_at = now()
         WHERE id = $1 AND status = 'failed'",
    )
    .bind(evaluation_id)
    .execute(&mut *conn)
    .await?;
    Ok(reopened.rows_affected() > 0)
}

/// One of the evaluation's scoring jobs is done: when every one is, moves the evaluation on and
/// enqueues its `evaluate` job (once). True when it did.
async fn start_if_scored(
    conn: &mut PgConnection,
    evaluation_id: Uuid,
    max_attempts: i32,
) -> Result<bool, ScoringError> {
    // The row lock orders concurrent finishers: the later one sees the earlier one's commit.
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM evaluations WHERE id = $1 FOR UPDATE")
            .bind(evaluation_id)
            .fetch_optional(&mut *conn)
            .await?;
    if status.as_deref() != Some("scoring") {
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
    store::only_failed(conn, "evaluations", "evaluate_job_id", job_id, "evaluation").await?;
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
async fn cancel_in(conn: &mut PgConnection, id: Uuid) -> Result<bool, ScoringError> {
    let jobs: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM scoring_jobs WHERE evaluation_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(&mut *conn)
            .await?;
    let scoring_cancelled = store::lock_and_cancel(conn, &jobs).await?;
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

/// One evaluated record: what the dataset says and each version's scores.
struct EvalRecord {
    position: i32,
    document_id: i64,
    source: String,
    external_id: String,
    text: String,
    checksum: String,
    labels: BTreeMap<String, Option<u8>>,
}

/// One version's side of the comparison.
struct Side {
    version: i32,
    labels: Vec<String>,
    thresholds: Vec<f32>,
    /// Per record (in `records` order), the version's scores.
    scores: Vec<Vec<f32>>,
}

/// Metrics as shown: labels nobody annotated on these records are listed apart rather than
/// given figures that could not be computed.
fn metrics_json(metrics: &Metrics, thresholds: &[f32], labels: &[String]) -> serde_json::Value {
    let mut value = json!(metrics);
    let annotated: Vec<&crate::training::metrics::LabelMetrics> = metrics
        .per_label
        .iter()
        .filter(|m| m.support + m.negatives > 0)
        .collect();
    // A label with no positive among these records has no recall and no F1 (not 0.0), and
    // the macro figures average the labels that have them.
    value["per_label"] = json!(annotated
        .iter()
        .map(|m| {
            let mut v = json!(m);
            if m.support == 0 {
                v["recall"] = serde_json::Value::Null;
                v["f1"] = serde_json::Value::Null;
            }
            v
        })
        .collect::<Vec<_>>());
    let defined: Vec<&&crate::training::metrics::LabelMetrics> =
        annotated.iter().filter(|m| m.support > 0).collect();
    let mean = |f: &dyn Fn(&crate::training::metrics::LabelMetrics) -> f64| {
        (!defined.is_empty())
            .then(|| defined.iter().map(|m| f(m)).sum::<f64>() / defined.len() as f64)
    };
    value["macro_recall"] = json!(mean(&|m| m.recall));
    value["macro_f1"] = json!(mean(&|m| m.f1));
    value["not_annotated"] = json!(metrics
        .per_label
        .iter()
        .filter(|m| m.support + m.negatives == 0)
        .map(|m| m.label.clone())
        .collect::<Vec<_>>());
    value["thresholds"] = json!(labels
        .iter()
        .cloned()
        .zip(thresholds.iter().copied())
        .collect::<BTreeMap<String, f32>>());
    value
}

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
            let _ = sqlx::query(
                "UPDATE evaluations SET status = 'cancelled', updated_at = now(), finished_at = now()
                 WHERE id = $1 AND status = 'evaluating'",
            )
            .bind(args.evaluation_id)
            .execute(&state.pool)
            .await;
        } else if ctx.is_last_attempt(e).await {
            let _ = sqlx::query(
                "UPDATE evaluations SET status = 'failed', error = $2, updated_at = now(), finished_at = now()
                 WHERE id = $1 AND status NOT IN ('done', 'cancelled')",
            )
            .bind(args.evaluation_id)
            .bind(format!("job {} failed: {e}", ctx.id))
            .execute(&state.pool)
            .await;
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
    let evaluation = get(pool, args.evaluation_id).await?.ok_or_else(|| {
        ScoringError::Invalid(format!(
            "evaluation {} no longer exists",
            args.evaluation_id
        ))
    })?;
    match evaluation.status.as_str() {
        "cancelled" => return Err(ScoringError::Cancelled),
        "done" | "failed" => {
            return Ok(json!({"evaluation_id": evaluation.id, "status": evaluation.status}))
        }
        _ => {}
    }
    if ctx.cancel_requested() {
        return Err(ScoringError::Cancelled);
    }
    let rows = sqlx::query(
        "SELECT r.position, r.document_id, r.source, r.external_id, r.text, r.checksum, r.labels
         FROM dataset_records r JOIN documents d ON d.id = r.document_id
         WHERE r.dataset_id = $1 AND r.split = $2 ORDER BY r.position",
    )
    .bind(evaluation.dataset_id)
    .bind(&evaluation.split)
    .fetch_all(pool)
    .await?;
    let records: Vec<EvalRecord> = rows
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
        .collect();
    let ids: Vec<i64> = records.iter().map(|r| r.document_id).collect();
    let jobs = sqlx::query(
        "SELECT version, labels, thresholds FROM scoring_jobs WHERE evaluation_id = $1 ORDER BY version",
    )
    .bind(evaluation.id)
    .fetch_all(pool)
    .await?;
    let mut sides = Vec::new();
    for job in &jobs {
        let version: i32 = job.get("version");
        // Scores of the records' own texts (the key holds the text's checksum).
        let stored: HashMap<(i64, String), Vec<f32>> = sqlx::query(
            "SELECT document_id, checksum, scores FROM document_scores
             WHERE model_name = $1 AND version = $2 AND document_id = ANY($3)",
        )
        .bind(&evaluation.model_name)
        .bind(version)
        .bind(&ids)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| ((r.get("document_id"), r.get("checksum")), r.get("scores")))
        .collect();
        let key = |r: &EvalRecord| (r.document_id, r.checksum.clone());
        let scores: Option<Vec<Vec<f32>>> = records
            .iter()
            .map(|r| stored.get(&key(r)).cloned())
            .collect();
        let Some(scores) = scores else {
            return Err(ScoringError::Invalid(format!(
                "version {version} has no score for {} of the {} records",
                records
                    .iter()
                    .filter(|r| !stored.contains_key(&key(r)))
                    .count(),
                records.len()
            )));
        };
        sides.push(Side {
            version,
            labels: job.get("labels"),
            thresholds: job.get("thresholds"),
            scores,
        });
    }

    for side in &sides {
        let annotated = records.iter().any(|r| {
            side.labels
                .iter()
                .any(|l| r.labels.get(l).copied().flatten().is_some())
        });
        if !annotated {
            return Err(ScoringError::Invalid(format!(
                "no record of the {} split of dataset {} annotates a label of version {} ({:?}): nothing to evaluate on",
                evaluation.split, evaluation.dataset_id, side.version, side.labels
            )));
        }
    }
    let mut results = Vec::new();
    let mut macro_f1 = HashMap::new();
    for side in &sides {
        let targets: Vec<Vec<Option<bool>>> = records
            .iter()
            .map(|r| {
                side.labels
                    .iter()
                    .map(|l| r.labels.get(l).copied().flatten().map(|v| v == 1))
                    .collect()
            })
            .collect();
        let at_stored = evaluate(&side.labels, &side.scores, &targets, &side.thresholds);
        let tuned = tune_thresholds(&side.scores, &targets, 0.5);
        let at_tuned = evaluate(&side.labels, &side.scores, &targets, &tuned);
        let stored_json = metrics_json(&at_stored, &side.thresholds, &side.labels);
        macro_f1.insert(side.version, stored_json["macro_f1"].as_f64());
        results.push(json!({
            "version": side.version,
            "labels": side.labels,
            "records": records.len(),
            "at_stored_thresholds": stored_json,
            "at_tuned_thresholds": metrics_json(&at_tuned, &tuned, &side.labels),
        }));
    }

    // Records on which the versions' decisions (at their stored thresholds) differ.
    let mut disagreements = Vec::new();
    for (i, record) in records.iter().enumerate() {
        let decisions: Vec<Vec<String>> = sides
            .iter()
            .map(|s| {
                let mut positive = positive_labels(&s.labels, &s.scores[i], &s.thresholds);
                positive.sort();
                positive
            })
            .collect();
        if decisions.windows(2).all(|w| w[0] == w[1]) {
            continue;
        }
        let predictions: serde_json::Map<String, serde_json::Value> = sides
            .iter()
            .zip(&decisions)
            .map(|(s, d)| {
                (
                    s.version.to_string(),
                    json!({
                        "positive_labels": d,
                        "scores": s.labels.iter().cloned().zip(s.scores[i].iter().copied()).collect::<BTreeMap<String, f32>>(),
                    }),
                )
            })
            .collect();
        disagreements.push((record, serde_json::Value::Object(predictions)));
    }

    let mut tx = pool.begin().await?;
    let status: String =
        sqlx::query_scalar("SELECT status FROM evaluations WHERE id = $1 FOR UPDATE")
            .bind(evaluation.id)
            .fetch_one(&mut *tx)
            .await?;
    if status != "evaluating" {
        return match status.as_str() {
            "cancelled" => Err(ScoringError::Cancelled),
            _ => Ok(json!({"evaluation_id": evaluation.id, "status": status})),
        };
    }
    sqlx::query("DELETE FROM evaluation_disagreements WHERE evaluation_id = $1")
        .bind(evaluation.id)
        .execute(&mut *tx)
        .await?;
    for block in disagreements.chunks(5000) {
        sqlx::query(
            "INSERT INTO evaluation_disagreements (evaluation_id, position, document_id, source, external_id, text, labels, predictions)
             SELECT $1, * FROM UNNEST($2::int[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::jsonb[], $8::jsonb[])",
        )
        .bind(evaluation.id)
        .bind(block.iter().map(|d| d.0.position).collect::<Vec<_>>())
        .bind(block.iter().map(|d| d.0.document_id).collect::<Vec<_>>())
        .bind(block.iter().map(|d| d.0.source.as_str()).collect::<Vec<_>>())
        .bind(block.iter().map(|d| d.0.external_id.as_str()).collect::<Vec<_>>())
        .bind(block.iter().map(|d| d.0.text.as_str()).collect::<Vec<_>>())
        .bind(block.iter().map(|d| json!(d.0.labels)).collect::<Vec<_>>())
        .bind(block.iter().map(|d| d.1.clone()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    let promotion = match &evaluation.promotion {
        Some(gate) => {
            let gate: PromotionGate = serde_json::from_value(gate.clone()).map_err(|e| {
                ScoringError::Invalid(format!("stored promotion gate unreadable: {e}"))
            })?;
            Some(decide_gate(&mut tx, &evaluation.model_name, gate, &macro_f1).await?)
        }
        None => None,
    };
    sqlx::query(
        "UPDATE evaluations SET status = 'done', results = $2, disagreements = $3, promotion = coalesce($4, promotion),
                updated_at = now(), finished_at = now()
         WHERE id = $1",
    )
    .bind(evaluation.id)
    .bind(json!({"versions": results}))
    .bind(disagreements.len() as i32)
    .bind(promotion.as_ref().map(|p| json!(p)))
    .execute(&mut *tx)
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

/// Applies a gate inside the evaluation's transaction: promotes the candidate when it beats the
/// version it was compared with by at least the margin (and by more than nothing), and that
/// version is still the served one.
async fn decide_gate(
    conn: &mut PgConnection,
    model: &str,
    mut gate: PromotionGate,
    macro_f1: &HashMap<i32, Option<f64>>,
) -> Result<PromotionGate, ScoringError> {
    let (Some(&candidate), Some(&against)) =
        (macro_f1.get(&gate.candidate), macro_f1.get(&gate.against))
    else {
        return Err(ScoringError::Invalid(
            "the gate's versions were not both evaluated".into(),
        ));
    };
    let (Some(candidate), Some(against)) = (candidate, against) else {
        gate.decision = Some("not_promoted".into());
        gate.reason = Some(format!(
            "macro-F1 could not be computed on these records (no positive of any label of v{} or v{}): nothing was changed",
            gate.candidate, gate.against
        ));
        return Ok(gate);
    };
    let delta = candidate - against;
    let served: Option<i32> =
        sqlx::query_scalar("SELECT served_version FROM models WHERE name = $1 FOR UPDATE")
            .bind(model)
            .fetch_optional(&mut *conn)
            .await?
            .flatten();
    let figures = format!(
        "macro-F1 {candidate:.4} (v{}) vs {against:.4} (v{}): {delta:+.4}, margin {}",
        gate.candidate, gate.against, gate.margin
    );
    if served != Some(gate.against) {
        gate.decision = Some("not_promoted".into());
        gate.reason = Some(format!(
            "{figures}; the served version is now {} (the gate compared with v{}), so nothing was changed",
            served.map_or("none".to_string(), |v| format!("v{v}")),
            gate.against
        ));
    } else if delta > 0.0 && delta >= gate.margin {
        crate::registry::promote_in_tx(conn, model, gate.candidate, "auto_promote")
            .await
            .map_err(|e| ScoringError::Transient(format!("promoting: {e}")))?;
        gate.decision = Some("promoted".into());
        gate.reason = Some(format!("{figures}: promoted"));
    } else {
        gate.decision = Some("not_promoted".into());
        gate.reason = Some(format!(
            "{figures}: below the margin, v{} keeps serving",
            gate.against
        ));
    }
    tracing::info!(model, decision = ?gate.decision, reason = ?gate.reason, "promotion gate decided");
    Ok(gate)
}

/// A training run's gated `auto_promote`: when a version other than the new one is served,
/// asks for an evaluation of both on the gate's dataset split (once per run); the `evaluate`
/// job then decides. Returns the evaluation's id, or `None` when nothing else is served.
pub async fn ensure_gate_evaluation(
    state: &WorkerState,
    run_id: Uuid,
    model_name: &str,
    version: i32,
    gate: &GateSettings,
) -> Result<Option<Uuid>, ScoringError> {
    let pool = &state.pool;
    let served = crate::registry::served_version(pool, model_name)
        .await?
        .flatten();
    let Some(against) = served.filter(|&v| v != version) else {
        return Ok(None);
    };
    let mut versions = Vec::new();
    for v in [against, version] {
        let meta = crate::registry::version_meta(pool, model_name, v)
            .await?
            .ok_or_else(|| {
                ScoringError::Invalid(format!("version {v} of `{model_name}` vanished"))
            })?;
        versions.push((v, meta));
    }
    let id = create(
        pool,
        &NewEvaluation {
            model_name,
            versions: &versions,
            dataset_id: gate.dataset_id,
            split: &gate.split,
            run_id: Some(run_id),
            promotion: Some(PromotionGate {
                candidate: version,
                against,
                margin: gate.margin,
                metric: GATE_METRIC.into(),
                decision: None,
                reason: None,
            }),
        },
        state.settings.queue.max_attempts,
    )
    .await?;
    tracing::info!(run = %run_id, model = model_name, version, against, evaluation = %id, "auto_promote waits for its evaluation");
    Ok(Some(id))
}

/// What a training run's gate asks for (stored on the run as `promotion_gate`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateSettings {
    pub dataset_id: Uuid,
    pub split: String,
    pub margin: f64,
}
