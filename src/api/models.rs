//! `/api/v1/models`: the model registry: list models and versions, promote, roll back, export.
use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::{Binary, Json};
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};
use uuid::Uuid;

use super::errors::ApiError;
use super::AppState;
use crate::registry::{self, RegistryError};

#[derive(Tags)]
enum ApiTags {
    /// Model registry: versions, promotion, rollback.
    Models,
}

#[derive(Debug, Object)]
pub struct Model {
    pub name: String,
    /// The version promoted for serving.
    #[oai(nullable)]
    pub served_version: Option<i32>,
    #[oai(nullable)]
    pub latest_version: Option<i32>,
    pub versions: i64,
    /// The version this API process serves from memory, and any load failure.
    #[oai(nullable)]
    pub loaded_version: Option<i32>,
    #[oai(nullable)]
    pub load_error: Option<String>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Object)]
pub struct ModelVersion {
    pub name: String,
    pub version: i32,
    pub served: bool,
    #[oai(nullable)]
    pub run_id: Option<Uuid>,
    #[oai(nullable)]
    pub dataset_id: Option<Uuid>,
    /// mode, task, labels and shape.
    pub spec: serde_json::Value,
    pub embedding_model: String,
    /// Per-label thresholds in label order.
    pub thresholds: serde_json::Value,
    /// `{validation, test}` metrics at the best epoch; a split that had no annotated record
    /// holds `{"validation_split": "empty", "rows": 0}` (or `test_split`) instead of figures.
    pub metrics: serde_json::Value,
    pub weights_bytes: i64,
    /// Per label: positives and negatives the training split held, in all and per source
    /// (`{label: {positives, negatives, sources: {source: {positives, negatives}}}}`). A source
    /// missing under a label never annotated it: the model's score for that label on that
    /// source's texts is an extrapolation. Absent for versions trained before this was kept.
    #[oai(nullable)]
    pub label_coverage: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Object)]
pub struct Promotion {
    pub name: String,
    /// The version now served.
    pub version: i32,
    /// The version served before.
    #[oai(nullable)]
    pub previous_version: Option<i32>,
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Database(db) => db.into(),
            RegistryError::NotFound(m) => ApiError::NotFound(Json(super::errors::ErrorBody {
                error: super::errors::ErrorDetail {
                    code: "not_found".into(),
                    message: m,
                    kind: "not_found_error".into(),
                    param: None,
                },
            })),
            RegistryError::Conflict(m) => ApiError::conflict(m),
        }
    }
}

impl From<registry::VersionSummary> for ModelVersion {
    fn from(v: registry::VersionSummary) -> Self {
        ModelVersion {
            name: v.name,
            version: v.version,
            served: v.served,
            run_id: v.run_id,
            dataset_id: v.dataset_id,
            spec: v.spec,
            embedding_model: v.embedding_model,
            thresholds: v.thresholds,
            metrics: v.metrics,
            weights_bytes: v.weights_bytes,
            label_coverage: v.label_coverage,
            created_at: v.created_at,
        }
    }
}

/// A version's export (see `registry::export`).
#[derive(ApiResponse)]
pub enum VersionExport {
    /// A tar holding one folder `{name}-v{version}/`: for a finetuned version the encoder as
    /// `transformers` loads it (`config.json`, tokenizer, `model.safetensors`), then
    /// `head.safetensors`, `trainyard.json` (labels, thresholds, pooling, truncation, metrics)
    /// and a README with the Python that reproduces the scores.
    #[oai(status = 200, content_type = "application/x-tar")]
    Tar(
        Binary<poem::Body>,
        /// `attachment; filename="{name}-v{version}.tar"`
        #[oai(header = "Content-Disposition")]
        String,
    ),
}

pub struct ModelsApi;

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Models")]
impl ModelsApi {
    /// Every model name, its served and latest version.
    #[oai(path = "/models", method = "get")]
    async fn list(&self, state: Data<&AppState>) -> Result<Json<Vec<Model>>, ApiError> {
        let status = state.models.status();
        let models = registry::list_models(&state.pool).await?;
        Ok(Json(
            models
                .into_iter()
                .map(|m| {
                    let s = status.iter().find(|s| s.name == m.name);
                    Model {
                        loaded_version: s.and_then(|s| s.loaded_version),
                        load_error: s.and_then(|s| s.error.clone()),
                        name: m.name,
                        served_version: m.served_version,
                        latest_version: m.latest_version,
                        versions: m.versions,
                        updated_at: m.updated_at,
                    }
                })
                .collect(),
        ))
    }

    /// A model's versions, newest first, with metrics, thresholds and label coverage.
    #[oai(path = "/models/:name/versions", method = "get")]
    async fn versions(
        &self,
        state: Data<&AppState>,
        name: Path<String>,
    ) -> Result<Json<Vec<ModelVersion>>, ApiError> {
        let versions = registry::list_versions(&state.pool, &name)
            .await?
            .ok_or_else(|| ApiError::model_not_found(&name))?;
        Ok(Json(versions.into_iter().map(ModelVersion::from).collect()))
    }

    /// One version: metrics, thresholds, and per label which sources annotated it in the
    /// training split (`label_coverage`).
    #[oai(path = "/models/:name/versions/:version", method = "get")]
    async fn version(
        &self,
        state: Data<&AppState>,
        name: Path<String>,
        /// The version number, >= 1.
        #[oai(validator(minimum(value = "1")))]
        version: Path<i32>,
    ) -> Result<Json<ModelVersion>, ApiError> {
        let wanted = version.0;
        let versions = registry::list_versions(&state.pool, &name)
            .await?
            .ok_or_else(|| ApiError::model_not_found(&name))?;
        versions
            .into_iter()
            .find(|v| v.version == wanted)
            .map(|v| Json(ModelVersion::from(v)))
            .ok_or_else(|| {
                RegistryError::NotFound(format!("model `{}` has no version {wanted}", name.0))
                    .into()
            })
    }

    /// Export this version for other tools: a tar of a folder that Hugging Face `transformers`
    /// loads (finetuned encoder), the head as safetensors, and a JSON with labels,
    /// thresholds, pooling and truncation. A head-only version exports its head and names
    /// its embedding model.
    #[oai(path = "/models/:name/versions/:version/export", method = "get")]
    async fn export(
        &self,
        state: Data<&AppState>,
        name: Path<String>,
        /// The version number, >= 1.
        #[oai(validator(minimum(value = "1")))]
        version: Path<i32>,
    ) -> Result<VersionExport, ApiError> {
        use crate::registry::export::{export_version, ExportError};
        let permit = state.heavy_permit("exports and review queues")?;
        let export = match export_version(&state.pool, &state.settings, &name, version.0).await {
            Ok(Some(export)) => export,
            Ok(None) => {
                return Err(match registry::served_version(&state.pool, &name).await? {
                    None => ApiError::model_not_found(&name),
                    Some(_) => RegistryError::NotFound(format!(
                        "model `{}` has no version {}",
                        name.0, version.0
                    ))
                    .into(),
                })
            }
            Err(ExportError::Database(e)) => return Err(e.into()),
            Err(ExportError::Unavailable(message)) => {
                return Err(ApiError::unavailable_logged(
                    format!(
                        "version {} of `{}` cannot be exported by this server",
                        version.0, name.0
                    ),
                    message,
                ))
            }
            Err(ExportError::Internal(message)) => return Err(ApiError::internal(message)),
        };
        Ok(VersionExport::Tar(
            Binary(poem::Body::from_bytes_stream(super::held(
                futures::stream::iter(export.pieces.into_iter().map(Ok::<_, std::io::Error>)),
                permit,
            ))),
            format!("attachment; filename=\"{}.tar\"", export.folder),
        ))
    }

    /// Serve this version. Every API process loads it in the background and swaps atomically;
    /// if it fails to load there, the previous version keeps serving.
    #[oai(path = "/models/:name/versions/:version/promote", method = "post")]
    async fn promote(
        &self,
        state: Data<&AppState>,
        name: Path<String>,
        /// The version number, >= 1.
        #[oai(validator(minimum(value = "1")))]
        version: Path<i32>,
    ) -> Result<Json<Promotion>, ApiError> {
        let version = version.0;
        let previous = registry::promote(&state.pool, &name, version).await?;
        Ok(Json(Promotion {
            name: name.0,
            version,
            previous_version: previous,
        }))
    }

    /// Serve the version that was served before the current one.
    #[oai(path = "/models/:name/rollback", method = "post")]
    async fn rollback(
        &self,
        state: Data<&AppState>,
        name: Path<String>,
    ) -> Result<Json<Promotion>, ApiError> {
        let (from, to) = registry::rollback(&state.pool, &name).await?;
        Ok(Json(Promotion {
            name: name.0,
            version: to,
            previous_version: Some(from),
        }))
    }
}
