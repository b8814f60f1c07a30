//! `/api/v1/evaluations`: versions of a model scored on the same dataset split and compared
//! label by label, with the records where their decisions differ.
use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};
use uuid::Uuid;

use super::datasets::SplitName;
use super::errors::ApiError;
use super::scoring::{dataset_labels, ready_dataset, resolve_version, split_name};
use super::{page_bounds, AppState};
use crate::scoring::evaluation::{self, EvaluationRow, NewEvaluation};

#[derive(Tags)]
enum ApiTags {
    /// Versions compared on the same labelled records before one is promoted.
    Evaluations,
}

#[derive(Debug, Object)]
pub struct CreateEvaluation {
    /// A model in the registry.
    #[oai(validator(min_length = 1, max_length = 200))]
    pub model: String,
    /// 1 to 10 distinct versions (each >= 1).
    #[oai(validator(min_items = 1, max_items = 10, minimum(value = "1")))]
    pub versions: Vec<i32>,
    /// A ready dataset whose labels the versions predict.
    pub dataset_id: Uuid,
    /// Which of its splits to score; default `test`.
    #[oai(nullable)]
    pub split: Option<SplitName>,
}

#[derive(Debug, Object)]
pub struct Evaluation {
    pub id: Uuid,
    pub model: String,
    pub versions: Vec<i32>,
    pub dataset_id: Uuid,
    pub split: String,
    /// scoring | evaluating | done | failed | cancelled
    pub status: String,
    /// The training run whose gated `auto_promote` asked for this evaluation.
    #[oai(nullable)]
    pub run_id: Option<Uuid>,
    /// A promotion gate: `{candidate, against, margin, metric}`, and once decided `decision`
    /// (`promoted` | `not_promoted`) and `reason` with the figures.
    #[oai(nullable)]
    pub promotion: Option<serde_json::Value>,
    /// Once done, `{versions: [{version, labels, records, at_stored_thresholds,
    /// at_tuned_thresholds}]}`: each metrics object has per-label precision, recall, F1 and
    /// ROC-AUC (labels no record of the split annotates are listed in `not_annotated`
    /// instead), macro and micro figures, and the thresholds used. Thresholds tuned on this
    /// split are fitted to it: their figures are an upper bound, not an estimate.
    #[oai(nullable)]
    pub results: Option<serde_json::Value>,
    /// Records whose positive labels (at stored thresholds) differ between versions.
    #[oai(nullable)]
    pub disagreements: Option<i32>,
    /// The scoring job of each version (`GET /api/v1/scoring-jobs?evaluation_id=`).
    pub scoring_jobs: Vec<Uuid>,
    #[oai(nullable)]
    pub evaluate_job_id: Option<String>,
    #[oai(nullable)]
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[oai(nullable)]
    pub finished_at: Option<DateTime<Utc>>,
}

async fn to_evaluation(state: &AppState, r: EvaluationRow) -> Result<Evaluation, ApiError> {
    let scoring_jobs = evaluation::scoring_jobs(&state.pool, r.id).await?;
    Ok(Evaluation {
        id: r.id,
        model: r.model_name,
        versions: r.versions,
        dataset_id: r.dataset_id,
        split: r.split,
        status: r.status.to_string(),
        run_id: r.run_id,
        promotion: r.promotion,
        results: r.results,
        disagreements: r.disagreements,
        scoring_jobs,
        evaluate_job_id: r.evaluate_job_id,
        error: r.error,
        created_at: r.created_at,
        updated_at: r.updated_at,
        finished_at: r.finished_at,
    })
}

#[derive(Debug, Object)]
pub struct EvaluationPage {
    pub items: Vec<Evaluation>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

#[derive(Debug, Object)]
pub struct DisagreementOut {
    pub position: i32,
    pub document_id: i64,
    pub source: String,
    pub external_id: String,
    pub text: String,
    /// The dataset's consensus labels (label -> 0/1, or null where masked).
    pub labels: serde_json::Value,
    /// version -> `{positive_labels, scores}`.
    pub predictions: serde_json::Value,
}

#[derive(Debug, Object)]
pub struct DisagreementPage {
    pub items: Vec<DisagreementOut>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

#[derive(ApiResponse)]
pub enum EvaluationCreated {
    /// The evaluation is queued (one scoring job per version).
    #[oai(status = 202)]
    Accepted(Json<Evaluation>),
}

async fn load(state: &AppState, id: Uuid) -> Result<EvaluationRow, ApiError> {
    evaluation::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found("evaluation", id))
}

pub struct EvaluationsApi;

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Evaluations")]
impl EvaluationsApi {
    /// Compare versions of a model on one split of a dataset: each is scored (as a job), then
    /// per-label precision, recall, F1 and ROC-AUC at its stored thresholds and at thresholds
    /// tuned on that split, and the records where they disagree.
    #[oai(path = "/evaluations", method = "post")]
    async fn create(
        &self,
        state: Data<&AppState>,
        body: Json<CreateEvaluation>,
    ) -> Result<EvaluationCreated, ApiError> {
        let mut sorted = body.versions.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != body.versions.len() {
            return Err(ApiError::unprocessable(
                "invalid_versions",
                "versions must be distinct",
                Some("versions"),
            ));
        }
        let mut versions = Vec::with_capacity(sorted.len());
        for v in &sorted {
            versions.push(resolve_version(&state, &body.model, Some(*v), "versions").await?);
        }
        let dataset_labels =
            dataset_labels(&ready_dataset(&state, body.dataset_id, "dataset_id").await?);
        for (v, meta) in &versions {
            if !meta.labels.iter().any(|l| dataset_labels.contains(l)) {
                return Err(ApiError::unprocessable(
                    "labels_mismatch",
                    format!(
                        "version {v} predicts {:?}; dataset {} is labelled {:?}: nothing to compare",
                        meta.labels, body.dataset_id, dataset_labels
                    ),
                    Some("dataset_id"),
                ));
            }
        }
        let split = split_name(body.split.unwrap_or(SplitName::Test));
        let id = evaluation::create(
            &state.pool,
            &NewEvaluation {
                model_name: &body.model,
                versions: &versions,
                dataset_id: body.dataset_id,
                split,
                run_id: None,
                promotion: None,
            },
            state.settings.queue.max_attempts,
        )
        .await?;
        let row = load(&state, id).await?;
        Ok(EvaluationCreated::Accepted(Json(
            to_evaluation(&state, row).await?,
        )))
    }

    /// Evaluations, newest first.
    #[oai(path = "/evaluations", method = "get")]
    async fn list(
        &self,
        state: Data<&AppState>,
        /// Page size, 1 to 1,000 (`server.page_size_max` may lower it); default 50.
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
        /// Items to skip, >= 0; default 0.
        #[oai(validator(minimum(value = "0")))]
        offset: Query<Option<i64>>,
    ) -> Result<Json<EvaluationPage>, ApiError> {
        let (limit, offset) = page_bounds(&state, limit.0, offset.0)?;
        let (rows, total) = evaluation::list(&state.pool, limit, offset).await?;
        let mut items = Vec::with_capacity(rows.len());
        for row in rows {
            items.push(to_evaluation(&state, row).await?);
        }
        Ok(Json(EvaluationPage {
            items,
            total,
            limit,
            offset,
        }))
    }

    /// One evaluation: its versions' metrics side by side once done.
    #[oai(path = "/evaluations/:id", method = "get")]
    async fn get(
        &self,
        state: Data<&AppState>,
        id: Path<Uuid>,
    ) -> Result<Json<Evaluation>, ApiError> {
        let row = load(&state, id.0).await?;
        Ok(Json(to_evaluation(&state, row).await?))
    }

    /// The records on which the versions' decisions differ, in dataset order.
    #[oai(path = "/evaluations/:id/disagreements", method = "get")]
    async fn disagreements(
        &self,
        state: Data<&AppState>,
        id: Path<Uuid>,
        /// Page size, 1 to 1,000 (`server.page_size_max` may lower it); default 50.
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
        /// Items to skip, >= 0; default 0.
        #[oai(validator(minimum(value = "0")))]
        offset: Query<Option<i64>>,
    ) -> Result<Json<DisagreementPage>, ApiError> {
        let row = load(&state, id.0).await?;
        let (limit, offset) = page_bounds(&state, limit.0, offset.0)?;
        let (rows, total) = evaluation::disagreements(&state.pool, row.id, limit, offset).await?;
        Ok(Json(DisagreementPage {
            items: rows
                .into_iter()
                .map(|d| DisagreementOut {
                    position: d.position,
                    document_id: d.document_id,
                    source: d.source,
                    external_id: d.external_id,
                    text: d.text,
                    labels: d.labels,
                    predictions: d.predictions,
                })
                .collect(),
            total,
            limit,
            offset,
        }))
    }

    /// Cancel an evaluation that has not finished, and its scoring jobs.
    #[oai(path = "/evaluations/:id/cancel", method = "post")]
    async fn cancel(
        &self,
        state: Data<&AppState>,
        id: Path<Uuid>,
    ) -> Result<Json<Evaluation>, ApiError> {
        let row = load(&state, id.0).await?;
        if !evaluation::cancel(&state.pool, row.id).await? {
            return Err(ApiError::conflict(format!(
                "evaluation {} is {}; only an unfinished one can be cancelled",
                row.id, row.status
            )));
        }
        let row = load(&state, id.0).await?;
        Ok(Json(to_evaluation(&state, row).await?))
    }
}
