//! The first seed's routes under `/v1`, answered on top of the new API so old clients work.
//!
//! `/v1/dataset/build` takes `aid_list` (ids in the `bilibili` external source, see
//! config/trainyard.toml), builds a binary dataset on the label `label`, and answers at once
//! with the dataset id; the build runs as a job like any other.
use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi, Tags};

use super::datasets::{
    create_dataset, validate_request, CreateDataset, LabelSchemaIn, LabelTaskType, SelectionIn,
};
use super::errors::ApiError;
use super::AppState;
use crate::datasets::store::{self, DatasetStatus};

#[derive(Tags)]
enum ApiTags {
    /// The first seed's dataset routes, kept for its clients.
    LegacyV1,
}

#[derive(Debug, Object)]
pub struct LegacyHealth {
    pub status: String,
    pub service: String,
    pub database: String,
}

#[derive(Debug, Object)]
pub struct LegacyModel {
    pub name: String,
    pub dimensions: usize,
    #[oai(rename = "type")]
    pub provider: String,
    pub max_tokens: usize,
    pub max_batch_size: usize,
}

#[derive(Debug, Object)]
pub struct LegacyModels {
    pub models: Vec<LegacyModel>,
}

#[derive(Debug, Object)]
pub struct LegacyBuildRequest {
    /// 1 to 10,000 bilibili ids.
    #[oai(validator(min_items = 1, max_items = 10000))]
    pub aid_list: Vec<i64>,
    #[oai(nullable)]
    pub embedding_model: Option<String>,
    #[oai(default)]
    pub force_regenerate: bool,
    #[oai(nullable)]
    pub description: Option<String>,
}

#[derive(Debug, Object)]
pub struct LegacyBuildResponse {
    pub dataset_id: String,
    pub total_records: usize,
    pub status: String,
    pub message: String,
}

#[derive(Debug, Object)]
pub struct LegacyDataset {
    pub dataset_id: String,
    pub status: String,
    pub description: String,
    pub embedding_model: String,
    #[oai(nullable)]
    pub stats: Option<serde_json::Value>,
    pub created_at: String,
    #[oai(nullable)]
    pub error: Option<String>,
}

#[derive(Debug, Object)]
pub struct LegacyDatasetList {
    pub datasets: Vec<LegacyDataset>,
    pub count: usize,
}

#[derive(Debug, Object)]
pub struct LegacyMessage {
    pub message: String,
    pub dataset_id: String,
}

fn legacy(row: store::DatasetRow) -> LegacyDataset {
    LegacyDataset {
        dataset_id: row.id.to_string(),
        status: if row.status == DatasetStatus::Ready {
            "completed".into()
        } else {
            row.status.to_string()
        },
        description: row.description,
        embedding_model: row.embedding_model,
        stats: row.stats,
        created_at: row.created_at.to_rfc3339(),
        error: row.error,
    }
}

async fn load(state: &AppState, uuid: uuid::Uuid) -> Result<store::DatasetRow, ApiError> {
    store::get(&state.pool, uuid)
        .await?
        .ok_or_else(|| ApiError::not_found("dataset", uuid))
}

pub struct LegacyV1Api;

#[OpenApi(prefix_path = "/v1", tag = "ApiTags::LegacyV1")]
impl LegacyV1Api {
    /// The first seed's health check (the database check waits at most 0.5 s).
    #[oai(path = "/health", method = "get")]
    async fn health(&self, state: Data<&AppState>) -> Json<LegacyHealth> {
        let db = state.database.check().await.is_reachable();
        Json(LegacyHealth {
            status: if db { "healthy" } else { "unhealthy" }.into(),
            service: "embedding-service".into(),
            database: if db { "connected" } else { "disconnected" }.into(),
        })
    }

    /// The configured embedding models.
    #[oai(path = "/models/embedding", method = "get")]
    async fn models(&self, state: Data<&AppState>) -> Json<LegacyModels> {
        let models = super::health::model_infos(&state)
            .into_iter()
            .map(|m| LegacyModel {
                name: m.name,
                dimensions: m.dimensions,
                provider: m.provider,
                max_tokens: m.max_tokens,
                max_batch_size: m.max_batch_size,
            })
            .collect();
        Json(LegacyModels { models })
    }

    /// Build a dataset from bilibili ids (`aid_list`).
    #[oai(path = "/dataset/build", method = "post")]
    async fn build(
        &self,
        state: Data<&AppState>,
        body: Json<LegacyBuildRequest>,
    ) -> Result<Json<LegacyBuildResponse>, ApiError> {
        let req = body.0;
        if req.aid_list.is_empty() {
            return Err(ApiError::bad_request(
                "aid_list must not be empty",
                Some("aid_list"),
            ));
        }
        let create = CreateDataset {
            name: format!("legacy build of {} ids", req.aid_list.len()),
            description: req.description.clone().unwrap_or_default(),
            selection: SelectionIn {
                source: Some("bilibili".into()),
                external_ids: req.aid_list.iter().map(|a| a.to_string()).collect(),
                ..Default::default()
            },
            embedding_model: req.embedding_model,
            force_regenerate: req.force_regenerate,
            label_schema: LabelSchemaIn {
                task_type: LabelTaskType::Binary,
                labels: vec!["label".into()],
                tie_rule: None,
            },
            splits: None,
        };
        let spec = validate_request(&state, &create)?;
        let row = create_dataset(&state, &create.name, &create.description, spec).await?;
        Ok(Json(LegacyBuildResponse {
            dataset_id: row.id.to_string(),
            total_records: req.aid_list.len(),
            status: "started".into(),
            message: format!(
                "dataset build started as job {}",
                row.build_job_id.unwrap_or_default()
            ),
        }))
    }

    /// One dataset.
    #[oai(path = "/dataset/:dataset_id", method = "get")]
    async fn get(
        &self,
        state: Data<&AppState>,
        dataset_id: Path<uuid::Uuid>,
    ) -> Result<Json<LegacyDataset>, ApiError> {
        Ok(Json(legacy(load(&state, dataset_id.0).await?)))
    }

    /// All datasets, newest first (at most 1000).
    #[oai(path = "/datasets", method = "get")]
    async fn list(&self, state: Data<&AppState>) -> Result<Json<LegacyDatasetList>, ApiError> {
        let (rows, _) = store::list(&state.pool, 1000, 0).await?;
        let datasets: Vec<LegacyDataset> = rows.into_iter().map(legacy).collect();
        Ok(Json(LegacyDatasetList {
            count: datasets.len(),
            datasets,
        }))
    }

    /// Delete a dataset (embeddings are kept).
    #[oai(path = "/dataset/:dataset_id", method = "delete")]
    async fn delete(
        &self,
        state: Data<&AppState>,
        dataset_id: Path<uuid::Uuid>,
    ) -> Result<Json<LegacyMessage>, ApiError> {
        let row = load(&state, dataset_id.0).await?;
        store::delete(&state.pool, row.id).await?;
        Ok(Json(LegacyMessage {
            message: "dataset deleted".into(),
            dataset_id: row.id.to_string(),
        }))
    }
}
