//! Inference: `/api/v1/models/{name}/predict|batch` and, for the default model, the second
//! seed's root `/predict` and `/batch` with its exact request and response shapes.
use std::collections::BTreeMap;
use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi, Tags};

use super::errors::ApiError;
use super::wire_types::Threshold;
use super::AppState;
use crate::inference::{decide, LoadedModel};

#[derive(Tags)]
enum ApiTags {
    /// Predictions from served (promoted) models.
    Inference,
}

#[derive(Debug, Object)]
pub struct PredictRequest {
    /// 1 to 100,000 characters (`server.max_text_chars` may lower it), not all whitespace.
    #[oai(validator(min_length = 1, max_length = 100000, pattern = "[^\\s\\x1c-\\x1f]"))]
    pub text: String,
    /// A number in [0, 1] for every label, a `{label: number}` map (other labels keep their
    /// stored threshold), or absent for the per-label thresholds tuned on validation.
    /// A label is positive when its score is `>=` its threshold.
    #[oai(nullable)]
    pub threshold: Option<Threshold>,
}

#[derive(Debug, Object)]
pub struct BatchRequest {
    /// 1 to 1,024 texts (`inference.max_batch_texts` may lower it), each at most 100,000
    /// characters. Each text fails alone: a blank or too long one gets its `error` in its
    /// result and the others are scored.
    #[oai(validator(min_items = 1, max_items = 1024, max_length = 100000))]
    pub texts: Vec<String>,
    /// As in `/predict`.
    #[oai(nullable)]
    pub threshold: Option<Threshold>,
}

#[derive(Debug, Object)]
pub struct PredictResult {
    pub text: String,
    /// Score per label (probability).
    pub predictions: BTreeMap<String, f32>,
    pub positive_labels: Vec<String>,
    #[oai(nullable)]
    pub top_label: Option<String>,
    #[oai(nullable)]
    pub max_score: Option<f32>,
    /// Why this text has no prediction (in a batch, each text fails alone); null otherwise.
    #[oai(nullable)]
    pub error: Option<String>,
}

#[derive(Debug, Object)]
pub struct BatchResult {
    /// Always the number of texts sent: no text is ever dropped.
    pub count: usize,
    pub results: Vec<PredictResult>,
}

/// Per-label thresholds for one request.
fn thresholds(
    model: &LoadedModel,
    given: Option<&serde_json::Value>,
) -> Result<Vec<f32>, ApiError> {
    resolve_thresholds(&model.spec.labels, &model.thresholds, given)
}

/// A request's `threshold` (a number for every label, a `{label: number}` map over the stored
/// ones, or absent for the stored ones) as one threshold per label.
pub(crate) fn resolve_thresholds(
    labels: &[String],
    stored: &[f32],
    given: Option<&serde_json::Value>,
) -> Result<Vec<f32>, ApiError> {
    let bad =
        |message: String| ApiError::unprocessable("invalid_threshold", message, Some("threshold"));
    let check = |x: f64, what: &str| -> Result<f32, ApiError> {
        if (0.0..=1.0).contains(&x) {
            Ok(x as f32)
        } else {
            Err(bad(format!("{what} must be between 0 and 1, got {x}")))
        }
    };
    match given {
        None | Some(serde_json::Value::Null) => Ok(stored.to_vec()),
        Some(serde_json::Value::Number(n)) => {
            let t = check(n.as_f64().unwrap_or(f64::NAN), "threshold")?;
            Ok(vec![t; labels.len()])
        }
        Some(serde_json::Value::Object(map)) => {
            let mut out = stored.to_vec();
            for (label, value) in map {
                let Some(i) = labels.iter().position(|l| l == label) else {
                    return Err(bad(format!(
                        "threshold names unknown label `{label}`; the model's labels are {labels:?}"
                    )));
                };
                let x = value
                    .as_f64()
                    .ok_or_else(|| bad(format!("threshold for `{label}` must be a number")))?;
                out[i] = check(x, &format!("threshold for `{label}`"))?;
            }
            Ok(out)
        }
        Some(other) => Err(bad(format!(
            "threshold must be a number, a {{label: number}} map or absent, got {other}"
        ))),
    }
}

fn text_problem(state: &AppState, text: &str) -> Option<String> {
    if super::limits::is_blank(text) {
        Some("text is empty".into())
    } else if text.chars().count() > state.settings.server.max_text_chars {
        Some(format!(
            "text is longer than {} characters",
            state.settings.server.max_text_chars
        ))
    } else {
        None
    }
}

fn result(model: &LoadedModel, text: String, scores: &[f32], thresholds: &[f32]) -> PredictResult {
    let p = decide(&model.spec.labels, scores, thresholds);
    PredictResult {
        text,
        predictions: p.predictions.into_iter().collect(),
        positive_labels: p.positive_labels,
        top_label: p.top_label,
        max_score: Some(p.max_score),
        error: None,
    }
}

fn failed(text: String, error: String) -> PredictResult {
    PredictResult {
        text,
        predictions: BTreeMap::new(),
        positive_labels: Vec::new(),
        top_label: None,
        max_score: None,
        error: Some(error),
    }
}

/// The served model of that name, or why there is none.
async fn served(state: &AppState, name: &str) -> Result<Arc<LoadedModel>, ApiError> {
    if let Some(model) = state.models.get(name) {
        return Ok(model);
    }
    match crate::registry::served_version(&state.pool, name).await? {
        None => Err(ApiError::model_not_found(name)),
        Some(None) => Err(ApiError::conflict(format!(
            "model `{name}` has no promoted version; promote one first"
        ))),
        Some(Some(v)) => {
            let failure = state
                .models
                .status()
                .into_iter()
                .find(|s| s.name == name)
                .and_then(|s| s.error);
            Err(match failure {
                Some(e) => ApiError::unavailable_logged(
                    format!(
                        "model `{name}` version {v} failed to load on this server (a `read` \
                         token sees why in /api/v1/health)"
                    ),
                    e,
                ),
                None => ApiError::unavailable(format!(
                    "model `{name}` version {v} is loading; retry shortly"
                )),
            })
        }
    }
}

async fn default_model(state: &AppState) -> Result<Arc<LoadedModel>, ApiError> {
    match state.models.default_model_name() {
        Some(name) => served(state, &name).await,
        None => Err(ApiError::unavailable(
            "no model is served yet: train one and promote it",
        )),
    }
}

pub async fn predict_one(
    state: &AppState,
    model: Arc<LoadedModel>,
    req: PredictRequest,
) -> Result<PredictResult, ApiError> {
    if let Some(problem) = text_problem(state, &req.text) {
        return Err(ApiError::unprocessable(
            "invalid_text",
            problem,
            Some("text"),
        ));
    }
    let thresholds = thresholds(&model, req.threshold.as_ref().map(|t| &t.0))?;
    let scores = model
        .scores(vec![req.text.clone()])
        .await
        .map_err(ApiError::internal)?;
    Ok(result(&model, req.text, &scores[0], &thresholds))
}

pub async fn predict_batch(
    state: &AppState,
    model: Arc<LoadedModel>,
    req: BatchRequest,
) -> Result<BatchResult, ApiError> {
    if req.texts.is_empty() {
        return Err(ApiError::unprocessable(
            "empty_batch",
            "texts is empty",
            Some("texts"),
        ));
    }
    let max = state.settings.inference.max_batch_texts;
    if req.texts.len() > max {
        return Err(ApiError::unprocessable(
            "batch_too_large",
            format!("at most {max} texts per batch, got {}", req.texts.len()),
            Some("texts"),
        ));
    }
    let thresholds = thresholds(&model, req.threshold.as_ref().map(|t| &t.0))?;
    let problems: Vec<Option<String>> = req.texts.iter().map(|t| text_problem(state, t)).collect();
    let good: Vec<String> = req
        .texts
        .iter()
        .zip(&problems)
        .filter(|(_, p)| p.is_none())
        .map(|(t, _)| t.clone())
        .collect();
    let scores = if good.is_empty() {
        Ok(Vec::new())
    } else {
        model.scores(good).await
    };
    let mut scored = match &scores {
        Ok(s) => Some(s.iter()),
        Err(e) => {
            tracing::error!(model = %model.name, "batch inference failed: {e}");
            None
        }
    };
    let results = req
        .texts
        .into_iter()
        .zip(problems)
        .map(|(text, problem)| match (problem, scored.as_mut()) {
            (Some(p), _) => failed(text, p),
            (None, Some(it)) => match it.next() {
                Some(s) => result(&model, text, s, &thresholds),
                None => failed(text, "no score returned".into()),
            },
            (None, None) => failed(text, "the model failed on this batch".into()),
        })
        .collect::<Vec<_>>();
    Ok(BatchResult {
        count: results.len(),
        results,
    })
}

pub struct PredictApi;

#[OpenApi(tag = "ApiTags::Inference")]
impl PredictApi {
    /// Predict one text with the served version of a model.
    #[oai(path = "/api/v1/models/:name/predict", method = "post")]
    async fn model_predict(
        &self,
        state: Data<&AppState>,
        name: Path<String>,
        body: Json<PredictRequest>,
    ) -> Result<Json<PredictResult>, ApiError> {
        let model = served(&state, &name).await?;
        Ok(Json(predict_one(&state, model, body.0).await?))
    }

    /// Predict many texts in one request; each result carries its own `error`.
    #[oai(path = "/api/v1/models/:name/batch", method = "post")]
    async fn model_batch(
        &self,
        state: Data<&AppState>,
        name: Path<String>,
        body: Json<BatchRequest>,
    ) -> Result<Json<BatchResult>, ApiError> {
        let model = served(&state, &name).await?;
        Ok(Json(predict_batch(&state, model, body.0).await?))
    }

    /// The second seed's `/predict`, served by the default model.
    #[oai(path = "/predict", method = "post")]
    async fn predict(
        &self,
        state: Data<&AppState>,
        body: Json<PredictRequest>,
    ) -> Result<Json<PredictResult>, ApiError> {
        let model = default_model(&state).await?;
        Ok(Json(predict_one(&state, model, body.0).await?))
    }

    /// The second seed's `/batch`, served by the default model.
    #[oai(path = "/batch", method = "post")]
    async fn batch(
        &self,
        state: Data<&AppState>,
        body: Json<BatchRequest>,
    ) -> Result<Json<BatchResult>, ApiError> {
        let model = default_model(&state).await?;
        Ok(Json(predict_batch(&state, model, body.0).await?))
    }
}
