//! `POST /v1/embeddings`: the OpenAI embeddings API, served from the local model; and
//! `GET /v1/models[/{model}]`, so that the official SDK's `models.list()` finds it.
//!
//! `input` is a string or an array of strings; `encoding_format` is `float` (default) or
//! `base64` (little-endian f32, what the official SDK asks for). Errors are OpenAI-shaped.
use base64::Engine;
use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi, Tags};

use super::errors::ApiError;
use super::wire_types::EmbeddingInput;
use super::AppState;

#[derive(Tags)]
enum ApiTags {
    /// OpenAI-compatible endpoints.
    OpenAi,
}

#[derive(Debug, Clone, Copy, Enum, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub enum EncodingFormat {
    Float,
    Base64,
}

#[derive(Debug, Object)]
pub struct EmbeddingsRequest {
    /// A string or an array of 1 to 2,048 strings (`server.max_inputs_per_request` may lower
    /// it), each 1 to 100,000 characters (`server.max_text_chars` may lower it). Token arrays
    /// are not supported.
    pub input: EmbeddingInput,
    /// The local model's name, e.g. `all-MiniLM-L6-v2`.
    pub model: String,
    #[oai(nullable)]
    pub encoding_format: Option<EncodingFormat>,
    /// Must equal the model's dimensions when given (no truncation).
    #[oai(nullable, validator(minimum(value = "1")))]
    pub dimensions: Option<usize>,
    #[oai(nullable)]
    pub user: Option<String>,
}

#[derive(Debug, Object)]
pub struct EmbeddingData {
    pub object: String,
    pub index: usize,
    /// Array of floats, or a base64 string of little-endian f32 values.
    pub embedding: serde_json::Value,
}

#[derive(Debug, Object)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Debug, Object)]
pub struct EmbeddingsResponse {
    pub object: String,
    pub data: Vec<EmbeddingData>,
    pub model: String,
    pub usage: Usage,
}

fn parse_input(
    value: serde_json::Value,
    max_items: usize,
    max_chars: usize,
) -> Result<Vec<String>, ApiError> {
    let texts = match value {
        serde_json::Value::String(s) => vec![s],
        serde_json::Value::Array(items) => {
            if items.is_empty() {
                return Err(ApiError::bad_request(
                    "'input' must not be an empty array",
                    Some("input"),
                ));
            }
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| match v {
                    serde_json::Value::String(s) => Ok(s),
                    _ => Err(ApiError::bad_request(
                        format!("'input[{i}]' must be a string (token arrays are not supported)"),
                        Some("input"),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        _ => {
            return Err(ApiError::bad_request(
                "'input' must be a string or an array of strings",
                Some("input"),
            ))
        }
    };
    if texts.len() > max_items {
        return Err(ApiError::bad_request(
            format!(
                "'input' has {} items; at most {max_items} are allowed",
                texts.len()
            ),
            Some("input"),
        ));
    }
    for (i, t) in texts.iter().enumerate() {
        if t.is_empty() {
            return Err(ApiError::bad_request(
                format!("'input[{i}]' is an empty string"),
                Some("input"),
            ));
        }
        if t.chars().count() > max_chars {
            return Err(ApiError::bad_request(
                format!("'input[{i}]' is longer than {max_chars} characters"),
                Some("input"),
            ));
        }
    }
    Ok(texts)
}

/// One model in OpenAI's shape.
#[derive(Debug, Object)]
pub struct OpenAiModel {
    /// The name to pass as `model` to `/v1/embeddings`.
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// Unix time this server started serving it.
    pub created: i64,
    pub owned_by: String,
}

#[derive(Debug, Object)]
pub struct OpenAiModelList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<OpenAiModel>,
}

fn served_models(state: &AppState) -> Vec<OpenAiModel> {
    static STARTED: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let created = *STARTED.get_or_init(|| chrono::Utc::now().timestamp());
    state
        .settings
        .embedding_models
        .values()
        .filter(|m| m.is_local())
        .map(|m| OpenAiModel {
            id: m.name.clone(),
            object: "model".into(),
            created,
            owned_by: "trainyard".into(),
        })
        .collect()
}

pub struct OpenAiEmbeddingsApi;

#[OpenApi(tag = "ApiTags::OpenAi")]
impl OpenAiEmbeddingsApi {
    /// The embedding models `/v1/embeddings` serves (OpenAI's `models.list`).
    #[oai(path = "/v1/models", method = "get")]
    async fn list_models(&self, state: Data<&AppState>) -> Json<OpenAiModelList> {
        Json(OpenAiModelList {
            object: "list".into(),
            data: served_models(&state),
        })
    }

    /// One embedding model (OpenAI's `models.retrieve`); 404 `model_not_found` otherwise.
    #[oai(path = "/v1/models/:model", method = "get")]
    async fn get_model(
        &self,
        state: Data<&AppState>,
        model: poem_openapi::param::Path<String>,
    ) -> Result<Json<OpenAiModel>, ApiError> {
        served_models(&state)
            .into_iter()
            .find(|m| m.id == model.0)
            .map(Json)
            .ok_or_else(|| ApiError::model_not_found(&model.0))
    }

    /// Create embeddings (OpenAI-compatible) with the local model.
    #[oai(path = "/v1/embeddings", method = "post")]
    async fn create_embeddings(
        &self,
        state: Data<&AppState>,
        body: Json<EmbeddingsRequest>,
    ) -> Result<Json<EmbeddingsResponse>, ApiError> {
        let req = body.0;
        let models = &state.settings.embedding_models;
        let (key, model) = models
            .get_key_value(&req.model)
            .or_else(|| {
                models.iter().find(|(_, m)| {
                    m.name == req.model || req.model.ends_with(&format!("/{}", m.name))
                })
            })
            .filter(|(_, m)| m.is_local())
            .ok_or_else(|| ApiError::model_not_found(&req.model))?;
        if let Some(d) = req.dimensions {
            if d != model.dimensions {
                return Err(ApiError::bad_request(
                    format!(
                        "'dimensions' must be {} for {}",
                        model.dimensions, model.name
                    ),
                    Some("dimensions"),
                ));
            }
        }
        let server = &state.settings.server;
        let texts = parse_input(
            req.input.0,
            server.max_inputs_per_request,
            server.max_text_chars,
        )?;
        let encoder = state.embedders.local_encoder(key).await.map_err(|e| {
            ApiError::unavailable_logged(
                format!("embedding model `{key}` cannot be loaded on this server"),
                e,
            )
        })?;
        let encoded = encoder.encode(texts).await.map_err(ApiError::internal)?;
        let base64 = req.encoding_format == Some(EncodingFormat::Base64);
        let tokens: usize = encoded.token_counts.iter().sum();
        let data = encoded
            .vectors
            .into_iter()
            .enumerate()
            .map(|(index, v)| EmbeddingData {
                object: "embedding".into(),
                index,
                embedding: if base64 {
                    serde_json::Value::String(
                        base64::engine::general_purpose::STANDARD
                            .encode(crate::embedding::vector_to_bytes(&v)),
                    )
                } else {
                    serde_json::json!(v)
                },
            })
            .collect();
        Ok(Json(EmbeddingsResponse {
            object: "list".into(),
            data,
            model: model.name.clone(),
            usage: Usage {
                prompt_tokens: tokens,
                total_tokens: tokens,
            },
        }))
    }
}
