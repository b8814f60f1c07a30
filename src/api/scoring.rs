//! `/api/v1/scoring-jobs`: score a corpus with a model version on the workers, follow it, page
//! through or export its results, cancel it.
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem::Body;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::{Binary, Json};
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};
use uuid::Uuid;

use super::datasets::{ExportFormat, SelectionIn, SplitName};
use super::errors::ApiError;
use super::wire_types::Threshold;
use super::{page_bounds, AppState};
use crate::queue::Owner;
use crate::registry::VersionMeta;
use crate::scoring::store::{self, NewScoringJob, ScoringJobRow, ScoringStatus};
use crate::scoring::{ScoredDocument, ScoringTarget};

#[derive(Tags)]
enum ApiTags {
    /// Batch scoring of whole corpora with a model version, on the workers.
    Scoring,
}

/// What to score: documents selected as `POST /api/v1/datasets` selects them (whole sources,
/// trainyard ids, or external ids in one source), or the records of a dataset (`dataset_id`,
/// optionally one `split`). Not both.
#[derive(Debug, Object, Default)]
pub struct ScoringSelectionIn {
    #[oai(flatten)]
    pub documents: SelectionIn,
    /// A dataset's records (their texts as the dataset was built).
    #[oai(nullable)]
    pub dataset_id: Option<Uuid>,
    /// With `dataset_id`: only this split.
    #[oai(nullable)]
    pub split: Option<SplitName>,
}

#[derive(Debug, Object)]
pub struct CreateScoringJob {
    /// A model in the registry.
    #[oai(validator(min_length = 1, max_length = 200))]
    pub model: String,
    /// The version to score with (>= 1); absent = the served one.
    #[oai(nullable, validator(minimum(value = "1")))]
    pub version: Option<i32>,
    pub selection: ScoringSelectionIn,
    /// Decides `positive_labels`: a number for every label, a `{label: number}` map over the
    /// version's stored thresholds, or absent for the stored ones. Scores are stored either
    /// way.
    #[oai(nullable)]
    pub threshold: Option<Threshold>,
}

#[derive(Debug, Object)]
pub struct ScoringProgress {
    pub chunks_done: i32,
    pub chunks_total: i32,
    /// Documents scored so far by this job (moves inside a chunk; absent before the plan).
    #[oai(nullable)]
    pub texts_done: Option<i64>,
    /// Documents this job has to score (absent before the plan).
    #[oai(nullable)]
    pub texts_total: Option<i64>,
    /// Documents per second since the first chunk started (absent until one has, and once
    /// the job is no longer scoring).
    #[oai(nullable)]
    pub texts_per_second: Option<f64>,
    /// Seconds left at that rate (absent when the rate is).
    #[oai(nullable)]
    pub eta_seconds: Option<f64>,
}

#[derive(Debug, Object)]
pub struct ScoringJob {
    pub id: Uuid,
    pub model: String,
    pub version: i32,
    pub labels: Vec<String>,
    /// label -> the threshold `positive_labels` are decided with.
    pub thresholds: BTreeMap<String, f32>,
    /// `stored` (the version's own) or `request`.
    pub threshold_source: String,
    /// pending | planning | scoring | done | failed | cancelled
    pub status: String,
    /// The request's selection.
    pub selection: serde_json::Value,
    /// Set when an evaluation made this job.
    #[oai(nullable)]
    pub evaluation_id: Option<Uuid>,
    /// The `score` job that plans it.
    #[oai(nullable)]
    pub plan_job_id: Option<String>,
    #[oai(nullable)]
    pub error: Option<String>,
    pub progress: ScoringProgress,
    /// Documents covered (with text); known once planned.
    pub documents: i64,
    /// Selected documents left out because they have no text.
    pub excluded_empty_text: i64,
    /// Documents this job scored.
    pub scored: i64,
    /// Documents whose score for this version was already stored (same text): not scored
    /// again.
    pub reused: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[oai(nullable)]
    pub started_at: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub finished_at: Option<DateTime<Utc>>,
}

impl ScoringJob {
    pub async fn from_row(state: &AppState, r: ScoringJobRow) -> Result<ScoringJob, ApiError> {
        let mut progress = ScoringProgress {
            chunks_done: r.chunks_done,
            chunks_total: r.chunks_total,
            texts_done: None,
            texts_total: None,
            texts_per_second: None,
            eta_seconds: None,
        };
        if let Some((done, total, started)) = crate::queue::owned_jobs_progress(
            &state.pool,
            Owner::ScoringJob(r.id),
            trainyard_jobs::JobKind::Score,
        )
        .await?
        {
            // The plan job counts 1 of 1; the chunks count documents.
            // Nothing to show before the plan stored its chunks (also when the job failed or
            // was cancelled before that).
            let planned = r.chunks_total > 0
                || matches!(r.status, ScoringStatus::Scoring | ScoringStatus::Done);
            if planned {
                let (done, total) = if r.status == ScoringStatus::Done {
                    (r.scored, r.scored)
                } else {
                    ((done - 1).clamp(0, total - 1), total - 1)
                };
                progress.texts_done = Some(done);
                progress.texts_total = Some(total);
                if r.status == ScoringStatus::Scoring {
                    if let Some((rate, eta)) = super::rate_and_eta(done, total, started) {
                        progress.texts_per_second = Some(rate);
                        progress.eta_seconds = Some(eta);
                    }
                }
            }
        }
        Ok(ScoringJob {
            id: r.id,
            thresholds: r
                .labels
                .iter()
                .cloned()
                .zip(r.thresholds.iter().copied())
                .collect(),
            model: r.model_name,
            version: r.version,
            labels: r.labels,
            threshold_source: r.threshold_source,
            status: r.status.to_string(),
            selection: r.request,
            evaluation_id: r.evaluation_id,
            plan_job_id: r.plan_job_id,
            error: r.error,
            progress,
            documents: r.documents_total,
            excluded_empty_text: r.excluded_empty_text,
            scored: r.scored,
            reused: r.reused,
            created_at: r.created_at,
            updated_at: r.updated_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
        })
    }
}

#[derive(Debug, Object)]
pub struct ScoringJobPage {
    pub items: Vec<ScoringJob>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

#[derive(Debug, Object)]
pub struct ScoredDocumentOut {
    /// Place in the job's document order.
    pub position: i32,
    pub document_id: i64,
    pub source: String,
    pub external_id: String,
    pub version: i32,
    /// label -> probability.
    pub scores: BTreeMap<String, f32>,
    /// Labels scoring `>=` the job's threshold.
    pub positive_labels: Vec<String>,
}

impl From<ScoredDocument> for ScoredDocumentOut {
    fn from(d: ScoredDocument) -> Self {
        ScoredDocumentOut {
            position: d.position,
            document_id: d.document_id,
            source: d.source,
            external_id: d.external_id,
            version: d.version,
            scores: d.scores.into_iter().collect(),
            positive_labels: d.positive_labels,
        }
    }
}

#[derive(Debug, Object)]
pub struct ScoredDocumentPage {
    /// Scored documents in the job's order (a document not scored yet is not listed).
    pub items: Vec<ScoredDocumentOut>,
    /// Documents the job covers.
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

#[derive(ApiResponse)]
pub enum ScoringJobCreated {
    /// The scoring job is queued (its plan job selects the documents).
    #[oai(status = 202)]
    Accepted(Json<ScoringJob>),
}

#[derive(ApiResponse)]
pub enum ScoresExport {
    /// JSON Lines: one scored document per line (streamed).
    #[oai(status = 200, content_type = "application/x-ndjson")]
    Jsonl(Binary<Body>),
    /// Apache Parquet, a row group per 20,000 documents (streamed; labels and thresholds in the
    /// file's metadata).
    #[oai(status = 200, content_type = "application/vnd.apache.parquet")]
    Parquet(Binary<Body>),
}

/// The version a request names (or the served one) and what the registry records about it.
pub async fn resolve_version(
    state: &AppState,
    model: &str,
    version: Option<i32>,
    param: &str,
) -> Result<(i32, VersionMeta), ApiError> {
    let served = crate::registry::served_version(&state.pool, model)
        .await?
        .ok_or_else(|| {
            ApiError::unprocessable(
                "unknown_model",
                format!("no model named `{model}` in the registry"),
                Some("model"),
            )
        })?;
    let version = match version.or(served) {
        Some(v) => v,
        None => {
            return Err(ApiError::unprocessable(
                "no_served_version",
                format!("model `{model}` serves no version: name one"),
                Some(param),
            ))
        }
    };
    let meta = crate::registry::version_meta(&state.pool, model, version)
        .await?
        .ok_or_else(|| {
            ApiError::unprocessable(
                "unknown_version",
                format!("model `{model}` has no version {version}"),
                Some(param),
            )
        })?;
    if meta.mode == "head" {
        let local = state
            .settings
            .embedding_models
            .get(&meta.embedding_model)
            .is_some_and(|m| m.is_local());
        if !local {
            return Err(ApiError::unprocessable(
                "unsupported_version",
                format!(
                    "version {version} of `{model}` is a head on `{}` embeddings, which workers cannot compute here (only the local model's)",
                    meta.embedding_model
                ),
                Some(param),
            ));
        }
    }
    Ok((version, meta))
}

/// A ready dataset named by a request (422 otherwise).
pub async fn ready_dataset(
    state: &AppState,
    id: Uuid,
    param: &str,
) -> Result<crate::datasets::store::DatasetRow, ApiError> {
    let dataset = crate::datasets::store::get(&state.pool, id)
        .await?
        .ok_or_else(|| {
            ApiError::unprocessable(
                "unknown_dataset",
                format!("dataset {id} does not exist"),
                Some(param),
            )
        })?;
    if dataset.status != crate::datasets::store::DatasetStatus::Ready {
        return Err(ApiError::unprocessable(
            "dataset_not_ready",
            format!("dataset {id} is {}; it must be ready", dataset.status),
            Some(param),
        ));
    }
    Ok(dataset)
}

/// The labels a dataset was built with (none when its stored request is unreadable).
pub fn dataset_labels(dataset: &crate::datasets::store::DatasetRow) -> Vec<String> {
    dataset.spec().map(|s| s.labels).unwrap_or_default()
}

pub fn split_name(split: SplitName) -> &'static str {
    match split {
        SplitName::Train => "train",
        SplitName::Validation => "validation",
        SplitName::Test => "test",
    }
}

async fn target(state: &AppState, sel: &ScoringSelectionIn) -> Result<ScoringTarget, ApiError> {
    match (sel.dataset_id, sel.documents.is_empty()) {
        (Some(_), false) => Err(ApiError::unprocessable(
            "invalid_selection",
            "selection names both a dataset and documents: give one",
            Some("selection"),
        )),
        (Some(dataset_id), true) => {
            ready_dataset(state, dataset_id, "selection.dataset_id").await?;
            Ok(ScoringTarget::Dataset {
                dataset_id,
                split: sel.split.map(|s| split_name(s).to_string()),
            })
        }
        (None, true) => Err(ApiError::unprocessable(
            "invalid_selection",
            "selection is empty: give sources, document_ids, source + external_ids, or dataset_id",
            Some("selection"),
        )),
        (None, false) => {
            if sel.split.is_some() {
                return Err(ApiError::unprocessable(
                    "invalid_selection",
                    "selection.split needs selection.dataset_id",
                    Some("selection.split"),
                ));
            }
            Ok(ScoringTarget::Documents {
                selection: sel.documents.checked("selection")?,
            })
        }
    }
}

async fn load(state: &AppState, id: Uuid) -> Result<ScoringJobRow, ApiError> {
    store::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found("scoring job", id))
}

pub struct ScoringApi;

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Scoring")]
impl ScoringApi {
    /// Score documents with a model version on the workers (a `score` job plans it and fans
    /// out chunks). Documents whose score for this version is stored (same text) are not
    /// scored again.
    #[oai(path = "/scoring-jobs", method = "post")]
    async fn create(
        &self,
        state: Data<&AppState>,
        body: Json<CreateScoringJob>,
    ) -> Result<ScoringJobCreated, ApiError> {
        let (version, meta) = resolve_version(&state, &body.model, body.version, "version").await?;
        let thresholds = super::predict::resolve_thresholds(
            &meta.labels,
            &meta.thresholds,
            body.threshold.as_ref().map(|t| &t.0),
        )?;
        let threshold_source = match body.threshold.as_ref().map(|t| &t.0) {
            None | Some(serde_json::Value::Null) => "stored",
            Some(_) => "request",
        };
        let target = target(&state, &body.selection).await?;
        let id = store::create(
            &state.pool,
            &NewScoringJob {
                model_name: &body.model,
                version,
                labels: &meta.labels,
                thresholds: &thresholds,
                threshold_source,
                target: &target,
                evaluation_id: None,
            },
            state.settings.queue.max_attempts,
        )
        .await?;
        let row = load(&state, id).await?;
        Ok(ScoringJobCreated::Accepted(Json(
            ScoringJob::from_row(&state, row).await?,
        )))
    }

    /// Scoring jobs, newest first.
    #[oai(path = "/scoring-jobs", method = "get")]
    async fn list(
        &self,
        state: Data<&AppState>,
        /// Only the jobs of this evaluation.
        evaluation_id: Query<Option<Uuid>>,
        /// Page size, 1 to 1,000 (`server.page_size_max` may lower it); default 50.
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
        /// Items to skip, >= 0; default 0.
        #[oai(validator(minimum(value = "0")))]
        offset: Query<Option<i64>>,
    ) -> Result<Json<ScoringJobPage>, ApiError> {
        let (limit, offset) = page_bounds(&state, limit.0, offset.0)?;
        let (rows, total) = store::list(&state.pool, evaluation_id.0, limit, offset).await?;
        let mut items = Vec::with_capacity(rows.len());
        for row in rows {
            items.push(ScoringJob::from_row(&state, row).await?);
        }
        Ok(Json(ScoringJobPage {
            items,
            total,
            limit,
            offset,
        }))
    }

    /// One scoring job: status, progress (texts, rate, ETA) and counts.
    #[oai(path = "/scoring-jobs/:id", method = "get")]
    async fn get(
        &self,
        state: Data<&AppState>,
        id: Path<Uuid>,
    ) -> Result<Json<ScoringJob>, ApiError> {
        let row = load(&state, id.0).await?;
        Ok(Json(ScoringJob::from_row(&state, row).await?))
    }

    /// A page of a scoring job's results, in document order.
    #[oai(path = "/scoring-jobs/:id/results", method = "get")]
    async fn results(
        &self,
        state: Data<&AppState>,
        id: Path<Uuid>,
        /// Page size, 1 to 1,000 (`server.page_size_max` may lower it); default 50.
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
        /// Items to skip, >= 0; default 0.
        #[oai(validator(minimum(value = "0")))]
        offset: Query<Option<i64>>,
    ) -> Result<Json<ScoredDocumentPage>, ApiError> {
        let job = load(&state, id.0).await?;
        let (limit, offset) = page_bounds(&state, limit.0, offset.0)?;
        let (rows, total) = store::results(&state.pool, &job, limit, offset).await?;
        Ok(Json(ScoredDocumentPage {
            items: rows.into_iter().map(Into::into).collect(),
            total,
            limit,
            offset,
        }))
    }

    /// Every result of a finished scoring job, as JSON Lines or Parquet, streamed in pages.
    #[oai(path = "/scoring-jobs/:id/export", method = "get")]
    async fn export(
        &self,
        state: Data<&AppState>,
        id: Path<Uuid>,
        format: Query<Option<ExportFormat>>,
    ) -> Result<ScoresExport, ApiError> {
        let job = load(&state, id.0).await?;
        if job.status != ScoringStatus::Done {
            return Err(ApiError::conflict(format!(
                "scoring job {} is {}; export needs it done",
                job.id, job.status
            )));
        }
        use crate::streamed_export::Format;
        let permit = state.heavy_permit("exports and review queues")?;
        let format = format.0.unwrap_or(ExportFormat::Jsonl).into();
        let body = Body::from_bytes_stream(super::held(
            crate::scoring::export::stream(state.pool.clone(), job, format)
                .map_err(ApiError::internal)?,
            permit,
        ));
        Ok(match format {
            Format::Jsonl => ScoresExport::Jsonl(Binary(body)),
            Format::Parquet => ScoresExport::Parquet(Binary(body)),
        })
    }

    /// Cancel a scoring job: waiting chunks never start, running ones stop at their next
    /// checkpoint; scores already stored stay (a new job reuses them).
    #[oai(path = "/scoring-jobs/:id/cancel", method = "post")]
    async fn cancel(
        &self,
        state: Data<&AppState>,
        id: Path<Uuid>,
    ) -> Result<Json<ScoringJob>, ApiError> {
        let job = load(&state, id.0).await?;
        let cancelled = store::cancel(&state.pool, job.id).await?;
        if !cancelled {
            return Err(ApiError::conflict(format!(
                "scoring job {} is {}; only an unfinished job can be cancelled",
                job.id, job.status
            )));
        }
        let row = load(&state, id.0).await?;
        Ok(Json(ScoringJob::from_row(&state, row).await?))
    }
}
