//! `/api/v1/documents` and `/api/v1/annotations`: batch ingest.
use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi, Tags};

use super::errors::ApiError;
use super::AppState;
use crate::datasets::documents::{
    insert_annotations_all_or_none, upsert_documents_in_pool, NewAnnotation, NewDocument,
};

#[derive(Tags)]
enum ApiTags {
    /// Labelled text in: documents and per-annotator labels.
    Ingest,
}

/// A document. Give `text`, or `title`/`description`/`tags` (the first seed's shape), or both.
#[derive(Debug, Object)]
pub struct DocumentIn {
    /// Where the document comes from (a namespace for `external_id`), e.g. `reviews`.
    /// 1 to 512 characters, not all whitespace.
    #[oai(validator(min_length = 1, max_length = 512, pattern = "[^\\s\\x1c-\\x1f]"))]
    pub source: String,
    /// The document's id in its source, 1 to 512 characters, not all whitespace.
    #[oai(validator(min_length = 1, max_length = 512, pattern = "[^\\s\\x1c-\\x1f]"))]
    pub external_id: String,
    /// Title, description, text and tags together: at most 100,000 characters
    /// (`server.max_text_chars` may lower it; more is a 413).
    #[oai(nullable, validator(max_length = 100000))]
    pub title: Option<String>,
    #[oai(nullable, validator(max_length = 100000))]
    pub description: Option<String>,
    #[oai(default, validator(max_items = 10000, max_length = 100000))]
    pub tags: Vec<String>,
    /// Plain text body.
    #[oai(nullable, validator(max_length = 100000))]
    pub text: Option<String>,
    /// Any JSON object kept with the document.
    #[oai(nullable)]
    pub metadata: Option<std::collections::BTreeMap<String, serde_json::Value>>,
}

#[derive(Debug, Object)]
pub struct DocumentsIn {
    /// 1 to 10,000 documents.
    #[oai(validator(min_items = 1, max_items = 10000))]
    pub documents: Vec<DocumentIn>,
}

#[derive(Debug, Object)]
pub struct UpsertResult {
    pub inserted: u64,
    pub updated: u64,
}

#[derive(Debug, Object)]
pub struct AnnotationIn {
    /// 1 to 512 characters, not all whitespace.
    #[oai(validator(min_length = 1, max_length = 512, pattern = "[^\\s\\x1c-\\x1f]"))]
    pub source: String,
    /// 1 to 512 characters, not all whitespace.
    #[oai(validator(min_length = 1, max_length = 512, pattern = "[^\\s\\x1c-\\x1f]"))]
    pub external_id: String,
    /// Who labelled it (a user name or a labelling function), 1 to 512 characters.
    #[oai(validator(min_length = 1, max_length = 512, pattern = "[^\\s\\x1c-\\x1f]"))]
    pub annotator: String,
    /// label -> true/false, at least one. Labels left out were not judged by this annotator.
    /// Label names are 1 to 512 characters.
    #[oai(validator(min_properties = 1))]
    pub labels: std::collections::BTreeMap<String, bool>,
    /// When the judgement was made; defaults to now. An annotator's latest judgement counts.
    #[oai(nullable)]
    pub annotated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Object)]
pub struct AnnotationsIn {
    /// 1 to 10,000 annotations.
    #[oai(validator(min_items = 1, max_items = 10000))]
    pub annotations: Vec<AnnotationIn>,
}

#[derive(Debug, Object)]
pub struct AnnotationsResult {
    /// Label rows stored.
    pub inserted: u64,
}

const MAX_BATCH: usize = super::limits::MAX_INGEST_ITEMS;

fn check_name(value: &str, field: &str, index: usize) -> Result<(), ApiError> {
    if super::limits::is_blank(value) || value.chars().count() > super::limits::MAX_NAME_CHARS {
        return Err(ApiError::bad_request(
            format!("{field} of item {index} must be 1 to 512 characters, not all whitespace"),
            Some(field),
        ));
    }
    Ok(())
}

pub struct DocumentsApi;

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Ingest")]
impl DocumentsApi {
    /// Upsert documents in bulk (at most 10,000 per call), keyed by (source, external_id).
    #[oai(path = "/documents", method = "post")]
    async fn upsert_documents(
        &self,
        state: Data<&AppState>,
        body: Json<DocumentsIn>,
    ) -> Result<Json<UpsertResult>, ApiError> {
        let docs = body.0.documents;
        if docs.is_empty() || docs.len() > MAX_BATCH {
            return Err(ApiError::bad_request(
                format!("send 1 to {MAX_BATCH} documents per call"),
                Some("documents"),
            ));
        }
        let max_chars = state.settings.server.max_text_chars;
        let mut rows = Vec::with_capacity(docs.len());
        for (i, d) in docs.into_iter().enumerate() {
            check_name(&d.source, "source", i)?;
            check_name(&d.external_id, "external_id", i)?;
            let chars: usize = [&d.title, &d.description, &d.text]
                .iter()
                .filter_map(|p| p.as_ref())
                .map(|p| p.chars().count())
                .sum::<usize>()
                + d.tags.iter().map(|t| t.chars().count()).sum::<usize>();
            if chars > max_chars {
                return Err(ApiError::too_large(
                    format!("document {i} has {chars} characters; the limit is {max_chars}"),
                    Some("documents"),
                ));
            }
            let has_text = [&d.title, &d.description, &d.text]
                .iter()
                .any(|p| p.as_ref().is_some_and(|p| !p.trim().is_empty()))
                || d.tags.iter().any(|t| !t.trim().is_empty());
            if !has_text {
                return Err(ApiError::unprocessable(
                    "no_text",
                    format!("document {i} has no text (give text, title, description or tags)"),
                    Some("text"),
                ));
            }
            rows.push(NewDocument {
                source: d.source,
                external_id: d.external_id,
                title: d.title,
                description: d.description,
                tags: d.tags,
                text: d.text,
                metadata: serde_json::Value::Object(
                    d.metadata.unwrap_or_default().into_iter().collect(),
                ),
            });
        }
        let (inserted, updated) = upsert_documents_in_pool(&state.pool, &rows).await?;
        Ok(Json(UpsertResult { inserted, updated }))
    }

    /// Add annotations in bulk. Every document must exist; the whole call is rejected otherwise.
    #[oai(path = "/annotations", method = "post")]
    async fn add_annotations(
        &self,
        state: Data<&AppState>,
        body: Json<AnnotationsIn>,
    ) -> Result<Json<AnnotationsResult>, ApiError> {
        let items = body.0.annotations;
        if items.is_empty() || items.len() > MAX_BATCH {
            return Err(ApiError::bad_request(
                format!("send 1 to {MAX_BATCH} annotations per call"),
                Some("annotations"),
            ));
        }
        let now = Utc::now();
        let mut rows = Vec::new();
        for (i, a) in items.into_iter().enumerate() {
            check_name(&a.source, "source", i)?;
            check_name(&a.external_id, "external_id", i)?;
            check_name(&a.annotator, "annotator", i)?;
            if a.labels.is_empty() {
                return Err(ApiError::bad_request(
                    format!("annotation {i} has no labels"),
                    Some("labels"),
                ));
            }
            for (label, value) in a.labels {
                // OpenAPI 3.0 cannot constrain an object's keys (no `propertyNames`): a rule
                // the document does not state, hence 422 rather than 400.
                if super::limits::is_blank(&label)
                    || label.chars().count() > super::limits::MAX_NAME_CHARS
                {
                    return Err(ApiError::unprocessable(
                        "invalid_name",
                        format!(
                            "label names of item {i} must be 1 to 512 characters, not all whitespace"
                        ),
                        Some("labels"),
                    ));
                }
                rows.push(NewAnnotation {
                    source: a.source.clone(),
                    external_id: a.external_id.clone(),
                    annotator: a.annotator.clone(),
                    label,
                    value,
                    annotated_at: a.annotated_at.unwrap_or(now),
                });
            }
        }
        let (inserted, missing) = insert_annotations_all_or_none(&state.pool, &rows).await?;
        if !missing.is_empty() {
            let shown: Vec<&str> = missing.iter().take(5).map(String::as_str).collect();
            return Err(ApiError::unprocessable(
                "unknown_document",
                format!(
                    "{} annotated documents do not exist (source/external_id): {}",
                    missing.len(),
                    shown.join(", ")
                ),
                Some("external_id"),
            ));
        }
        Ok(Json(AnnotationsResult { inserted }))
    }
}
