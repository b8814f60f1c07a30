//! `/api/v1/datasets`: build (as a job), inspect, page through records, export, delete.
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem::Body;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::{Binary, Json};
use poem_openapi::{ApiResponse, Enum, Object, OpenApi, Tags};
use uuid::Uuid;

use super::errors::ApiError;
use super::wire_types::MaskedLabel;
use super::{page_bounds, AppState};
use crate::config::TieRule;
use crate::datasets::store::{self, DatasetStatus};
use crate::datasets::{DatasetSpec, Selection, SplitRatios, TaskType};

#[derive(Tags)]
enum ApiTags {
    /// Built, embedded, versioned datasets.
    Datasets,
}

#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "snake_case")]
pub enum LabelTaskType {
    Binary,
    MultiClass,
    MultiLabel,
}

#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "snake_case")]
pub enum TieRuleIn {
    Positive,
    Negative,
    Exclude,
}

/// Which documents to take: whole sources, trainyard ids, or external ids in one source.
#[derive(Debug, Object, Default)]
pub struct SelectionIn {
    #[oai(default)]
    pub sources: Vec<String>,
    /// trainyard document ids (>= 1).
    #[oai(default, validator(minimum(value = "1")))]
    pub document_ids: Vec<i64>,
    #[oai(nullable)]
    pub source: Option<String>,
    #[oai(default)]
    pub external_ids: Vec<String>,
}

impl SelectionIn {
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty() && self.document_ids.is_empty() && self.external_ids.is_empty()
    }

    /// Checks a selection found at `param` in the body and returns it as stored.
    pub fn checked(&self, param: &str) -> Result<Selection, ApiError> {
        if self.is_empty() {
            return Err(ApiError::unprocessable(
                "invalid_selection",
                format!("{param} is empty: give sources, document_ids, or source + external_ids"),
                Some(param),
            ));
        }
        if !self.external_ids.is_empty() && self.source.is_none() {
            return Err(ApiError::unprocessable(
                "invalid_selection",
                format!("{param}.external_ids needs {param}.source"),
                Some(&format!("{param}.source")),
            ));
        }
        if self.document_ids.iter().any(|&id| id <= 0) {
            return Err(ApiError::bad_request(
                "document ids are positive integers",
                Some(&format!("{param}.document_ids")),
            ));
        }
        Ok(Selection {
            sources: self.sources.clone(),
            document_ids: self.document_ids.clone(),
            source: self.source.clone(),
            external_ids: self.external_ids.clone(),
        })
    }
}

#[derive(Debug, Object)]
pub struct LabelSchemaIn {
    /// binary (one label), multi_label (independent labels) or multi_class (one of the labels).
    #[oai(rename = "type")]
    pub task_type: LabelTaskType,
    /// Distinct, non-empty names: 1 for binary, 2 to 1,000 for multi_class, 1 to 1,000 for
    /// multi_label.
    #[oai(validator(
        min_items = 1,
        max_items = 1000,
        unique_items,
        min_length = 1,
        max_length = 512,
        pattern = "[^\\s\\x1c-\\x1f]"
    ))]
    pub labels: Vec<String>,
    /// What a tied majority vote becomes (binary / multi-label). Default from config.
    #[oai(nullable)]
    pub tie_rule: Option<TieRuleIn>,
}

#[derive(Debug, Object)]
pub struct SplitsIn {
    /// Share of records in train, (0, 1]; the three shares sum to 1.
    #[oai(
        default = "default_train",
        validator(minimum(value = "0"), maximum(value = "1"))
    )]
    pub train: f64,
    #[oai(
        default = "default_held_out",
        validator(minimum(value = "0"), maximum(value = "1"))
    )]
    pub validation: f64,
    #[oai(
        default = "default_held_out",
        validator(minimum(value = "0"), maximum(value = "1"))
    )]
    pub test: f64,
    /// Split seed, 0 to 4294967295. Default from config.
    #[oai(
        nullable,
        validator(minimum(value = "0"), maximum(value = "4294967295"))
    )]
    pub seed: Option<u64>,
}

fn default_train() -> f64 {
    0.8
}
fn default_held_out() -> f64 {
    0.1
}

#[derive(Debug, Object)]
pub struct CreateDataset {
    /// 1 to 200 characters, not all whitespace.
    #[oai(validator(min_length = 1, max_length = 200, pattern = "[^\\s\\x1c-\\x1f]"))]
    pub name: String,
    #[oai(default)]
    pub description: String,
    pub selection: SelectionIn,
    /// A model from embedding_models.toml; default from config (the local MiniLM).
    #[oai(nullable)]
    pub embedding_model: Option<String>,
    /// Embed every text again even when a vector is stored.
    #[oai(default)]
    pub force_regenerate: bool,
    pub label_schema: LabelSchemaIn,
    /// Default 80/10/10, seed from config.
    #[oai(nullable)]
    pub splits: Option<SplitsIn>,
}

#[derive(Debug, Object)]
pub struct DatasetProgress {
    pub batches_done: i32,
    pub batches_total: i32,
    /// Texts embedded or found stored so far, over all batches (moves inside a batch).
    #[oai(nullable)]
    pub texts_done: Option<i64>,
    /// Texts the build fanned out for embedding (absent before the fan-out, or once its jobs
    /// were pruned).
    #[oai(nullable)]
    pub texts_total: Option<i64>,
    /// Texts per second since the first batch started (absent until one has started, and
    /// once the dataset is no longer embedding).
    #[oai(nullable)]
    pub texts_per_second: Option<f64>,
    /// Seconds left at that rate (absent when the rate is).
    #[oai(nullable)]
    pub eta_seconds: Option<f64>,
}

impl DatasetProgress {
    /// Adds the text counts, rate and ETA from the dataset's embed jobs.
    pub async fn fill_texts(
        &mut self,
        state: &AppState,
        id: Uuid,
        status: DatasetStatus,
    ) -> Result<(), ApiError> {
        let Some((done, total, started)) = crate::queue::owned_jobs_progress(
            &state.pool,
            crate::queue::Owner::Dataset(id),
            trainyard_jobs::JobKind::Embed,
        )
        .await?
        else {
            return Ok(());
        };
        let done = if status == DatasetStatus::Ready {
            total
        } else {
            done.min(total)
        };
        self.texts_done = Some(done);
        self.texts_total = Some(total);
        if status == DatasetStatus::Embedding {
            if let Some((rate, eta)) = super::rate_and_eta(done, total, started) {
                self.texts_per_second = Some(rate);
                self.eta_seconds = Some(eta);
            }
        }
        Ok(())
    }
}

#[derive(Debug, Object)]
pub struct Dataset {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    /// pending | building | embedding | ready | failed | cancelled
    pub status: String,
    pub embedding_model: String,
    pub dimensions: i32,
    #[oai(nullable)]
    pub build_job_id: Option<String>,
    #[oai(nullable)]
    pub error: Option<String>,
    pub progress: DatasetProgress,
    /// Embeddings this dataset computed.
    pub new_embeddings: i32,
    /// Embeddings it found already stored.
    pub reused_embeddings: i32,
    /// Records, exclusions, inconsistent labels, label distribution per split.
    #[oai(nullable)]
    pub stats: Option<serde_json::Value>,
    /// The request the dataset was built from.
    pub spec: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[oai(nullable)]
    pub ready_at: Option<DateTime<Utc>>,
}

impl From<store::DatasetRow> for Dataset {
    fn from(r: store::DatasetRow) -> Self {
        Dataset {
            id: r.id,
            name: r.name,
            description: r.description,
            status: r.status.to_string(),
            embedding_model: r.embedding_model,
            dimensions: r.dimensions,
            build_job_id: r.build_job_id,
            error: r.error,
            progress: DatasetProgress {
                batches_done: r.batches_done,
                batches_total: r.batches_total,
                texts_done: None,
                texts_total: None,
                texts_per_second: None,
                eta_seconds: None,
            },
            new_embeddings: r.new_embeddings,
            reused_embeddings: r.reused_embeddings,
            stats: r.stats,
            spec: r.request,
            created_at: r.created_at,
            updated_at: r.updated_at,
            ready_at: r.ready_at,
        }
    }
}

#[derive(Debug, Object)]
pub struct DatasetPage {
    pub items: Vec<Dataset>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

#[derive(Debug, Object)]
pub struct Record {
    pub position: i32,
    pub document_id: i64,
    pub source: String,
    pub external_id: String,
    pub checksum: String,
    pub text: String,
    /// train | validation | test
    pub split: String,
    /// label -> 0/1, or null where the label is masked (not annotated for this record).
    pub labels: BTreeMap<String, MaskedLabel>,
    /// label -> latest votes {positive, negative}.
    pub votes: serde_json::Value,
    /// The annotators' latest votes disagree on some label.
    pub disagreement: bool,
    #[oai(nullable)]
    pub embedding: Option<Vec<f32>>,
}

#[derive(Debug, Object)]
pub struct RecordPage {
    pub items: Vec<Record>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

#[derive(Debug, Object)]
pub struct Deleted {
    pub id: Uuid,
    pub deleted: bool,
}

#[derive(ApiResponse)]
pub enum ExportResponse {
    /// JSON Lines: one record per line, with its embedding (streamed).
    #[oai(status = 200, content_type = "application/x-ndjson")]
    Jsonl(Binary<Body>),
    /// Apache Parquet, a row group per 5,000 records (streamed).
    #[oai(status = 200, content_type = "application/vnd.apache.parquet")]
    Parquet(Binary<Body>),
}

/// A dataset split.
#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "lowercase")]
pub enum SplitName {
    Train,
    Validation,
    Test,
}

#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "lowercase")]
pub enum ExportFormat {
    Jsonl,
    Parquet,
}

impl From<ExportFormat> for crate::streamed_export::Format {
    fn from(format: ExportFormat) -> Self {
        match format {
            ExportFormat::Jsonl => Self::Jsonl,
            ExportFormat::Parquet => Self::Parquet,
        }
    }
}

/// Validates a create request against config; returns the stored spec.
pub fn validate_request(state: &AppState, req: &CreateDataset) -> Result<DatasetSpec, ApiError> {
    if super::limits::is_blank(&req.name)
        || req.name.chars().count() > super::limits::MAX_DATASET_NAME_CHARS
    {
        return Err(ApiError::bad_request(
            "name must be 1 to 200 characters, not all whitespace",
            Some("name"),
        ));
    }
    let selection = req.selection.checked("selection")?;
    let model = req
        .embedding_model
        .clone()
        .unwrap_or_else(|| state.settings.datasets.default_embedding_model.clone());
    if !state.settings.embedding_models.contains_key(&model) {
        let known: Vec<&String> = state.settings.embedding_models.keys().collect();
        return Err(ApiError::unprocessable(
            "unknown_model",
            format!("unknown embedding model `{model}`; configured: {known:?}"),
            Some("embedding_model"),
        ));
    }
    let schema = &req.label_schema;
    let mut labels = schema.labels.clone();
    labels.sort();
    labels.dedup();
    if labels.len() != schema.labels.len() || labels.iter().any(|l| super::limits::is_blank(l)) {
        return Err(ApiError::bad_request(
            "labels must be distinct names, not all whitespace",
            Some("label_schema.labels"),
        ));
    }
    let task_type = match schema.task_type {
        LabelTaskType::Binary => TaskType::Binary,
        LabelTaskType::MultiClass => TaskType::MultiClass,
        LabelTaskType::MultiLabel => TaskType::MultiLabel,
    };
    let needed = match task_type {
        TaskType::Binary => (1, 1),
        TaskType::MultiClass => (2, 1000),
        TaskType::MultiLabel => (1, 1000),
    };
    if labels.len() < needed.0 || labels.len() > needed.1 {
        return Err(ApiError::unprocessable(
            "invalid_labels",
            format!(
                "{:?} needs {} to {} labels, got {}",
                schema.task_type,
                needed.0,
                needed.1,
                labels.len()
            ),
            Some("label_schema.labels"),
        ));
    }
    let splits = req.splits.as_ref();
    let (train, validation, test) =
        splits.map_or((0.8, 0.1, 0.1), |s| (s.train, s.validation, s.test));
    let sum = train + validation + test;
    if [train, validation, test]
        .iter()
        .any(|r| !r.is_finite() || *r < 0.0)
        || (sum - 1.0).abs() > 1e-6
        || train <= 0.0
    {
        return Err(ApiError::unprocessable(
            "invalid_splits",
            format!("split ratios must be >= 0, train > 0, and sum to 1 (got {train} + {validation} + {test})"),
            Some("splits"),
        ));
    }
    let tie_rule = match schema.tie_rule {
        Some(TieRuleIn::Positive) => TieRule::Positive,
        Some(TieRuleIn::Negative) => TieRule::Negative,
        Some(TieRuleIn::Exclude) => TieRule::Exclude,
        None => state.settings.datasets.tie_rule,
    };
    Ok(DatasetSpec {
        selection,
        embedding_model: model,
        force_regenerate: req.force_regenerate,
        task_type,
        labels: schema.labels.clone(),
        splits: SplitRatios {
            train,
            validation,
            test,
            seed: splits
                .and_then(|s| s.seed)
                .unwrap_or(state.settings.datasets.split_seed),
        },
        tie_rule,
        max_text_chars: state.settings.server.max_text_chars,
    })
}

/// Creates the dataset row and its build job in one transaction.
pub async fn create_dataset(
    state: &AppState,
    name: &str,
    description: &str,
    spec: DatasetSpec,
) -> Result<store::DatasetRow, ApiError> {
    let dims = state.settings.embedding_models[&spec.embedding_model].dimensions as i32;
    let id = store::create(
        &state.pool,
        store::NewDataset {
            name,
            description,
            spec: &spec,
            dimensions: dims,
        },
        state.settings.queue.max_attempts,
    )
    .await?;
    store::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::internal("dataset vanished after insert"))
}

async fn load(state: &AppState, uuid: Uuid) -> Result<store::DatasetRow, ApiError> {
    store::get(&state.pool, uuid)
        .await?
        .ok_or_else(|| ApiError::not_found("dataset", uuid))
}

fn to_record(r: store::RecordRow) -> Record {
    Record {
        position: r.position,
        document_id: r.document_id,
        source: r.source,
        external_id: r.external_id,
        checksum: r.checksum,
        text: r.text,
        split: r.split,
        labels: serde_json::from_value::<BTreeMap<String, Option<u8>>>(r.labels)
            .unwrap_or_default()
            .into_iter()
            .map(|(label, value)| (label, MaskedLabel(value)))
            .collect(),
        votes: r.votes,
        disagreement: r.disagreement,
        embedding: r.embedding,
    }
}

pub struct DatasetsApi;

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Datasets")]
impl DatasetsApi {
    /// Build a dataset (asynchronously): answers 202 with the dataset and its build job id.
    #[oai(path = "/datasets", method = "post")]
    async fn create(
        &self,
        state: Data<&AppState>,
        body: Json<CreateDataset>,
    ) -> Result<Json<Dataset>, ApiError> {
        let spec = validate_request(&state, &body)?;
        let row = create_dataset(&state, body.name.trim(), &body.description, spec).await?;
        Ok(Json(row.into()))
    }

    /// Datasets, newest first.
    #[oai(path = "/datasets", method = "get")]
    async fn list(
        &self,
        state: Data<&AppState>,
        /// Page size, 1 to 1,000 (`server.page_size_max` may lower it); default 50.
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
        /// Items to skip, >= 0; default 0.
        #[oai(validator(minimum(value = "0")))]
        offset: Query<Option<i64>>,
    ) -> Result<Json<DatasetPage>, ApiError> {
        let (limit, offset) = page_bounds(&state, limit.0, offset.0)?;
        let (rows, total) = store::list(&state.pool, limit, offset).await?;
        Ok(Json(DatasetPage {
            items: rows.into_iter().map(Dataset::from).collect(),
            total,
            limit,
            offset,
        }))
    }

    /// One dataset: status, progress and stats.
    #[oai(path = "/datasets/:id", method = "get")]
    async fn get(&self, state: Data<&AppState>, id: Path<Uuid>) -> Result<Json<Dataset>, ApiError> {
        let row = load(&state, id.0).await?;
        let (dataset_id, status) = (row.id, row.status);
        let mut dataset: Dataset = row.into();
        dataset
            .progress
            .fill_texts(&state, dataset_id, status)
            .await?;
        Ok(Json(dataset))
    }

    /// Records in order, optionally one split, optionally with their embeddings.
    #[oai(path = "/datasets/:id/records", method = "get")]
    async fn records(
        &self,
        state: Data<&AppState>,
        id: Path<Uuid>,
        /// Only records of this split.
        split: Query<Option<SplitName>>,
        #[oai(default)] with_embeddings: Query<bool>,
        /// Page size, 1 to 1,000 (`server.page_size_max` may lower it); default 50.
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<i64>>,
        /// Items to skip, >= 0; default 0.
        #[oai(validator(minimum(value = "0")))]
        offset: Query<Option<i64>>,
    ) -> Result<Json<RecordPage>, ApiError> {
        let dataset = load(&state, id.0).await?;
        let split = split.0.map(|s| match s {
            SplitName::Train => "train",
            SplitName::Validation => "validation",
            SplitName::Test => "test",
        });
        let (limit, offset) = page_bounds(&state, limit.0, offset.0)?;
        let (rows, total) = store::records(
            &state.pool,
            &dataset,
            split,
            with_embeddings.0,
            limit,
            offset,
        )
        .await?;
        Ok(Json(RecordPage {
            items: rows.into_iter().map(to_record).collect(),
            total,
            limit,
            offset,
        }))
    }

    /// Export every record with its embedding, as JSON Lines or Parquet. The dataset must be ready.
    #[oai(path = "/datasets/:id/export", method = "get")]
    async fn export(
        &self,
        state: Data<&AppState>,
        id: Path<Uuid>,
        format: Query<Option<ExportFormat>>,
    ) -> Result<ExportResponse, ApiError> {
        let dataset = load(&state, id.0).await?;
        if dataset.status != DatasetStatus::Ready {
            return Err(ApiError::conflict(format!(
                "dataset {} is {}; export needs it ready",
                dataset.id, dataset.status
            )));
        }
        use crate::streamed_export::Format;
        let permit = state.heavy_permit("exports and review queues")?;
        let format = format.0.unwrap_or(ExportFormat::Jsonl).into();
        let body = Body::from_bytes_stream(super::held(
            crate::datasets::export::stream(state.pool.clone(), dataset, format)
                .map_err(ApiError::internal)?,
            permit,
        ));
        Ok(match format {
            Format::Jsonl => ExportResponse::Jsonl(Binary(body)),
            Format::Parquet => ExportResponse::Parquet(Binary(body)),
        })
    }

    /// Delete a dataset and its records. Shared embeddings stay for other datasets.
    #[oai(path = "/datasets/:id", method = "delete")]
    async fn delete(
        &self,
        state: Data<&AppState>,
        id: Path<Uuid>,
    ) -> Result<Json<Deleted>, ApiError> {
        let dataset = load(&state, id.0).await?;
        let deleted = store::delete(&state.pool, dataset.id).await?;
        Ok(Json(Deleted {
            id: dataset.id,
            deleted,
        }))
    }
}
