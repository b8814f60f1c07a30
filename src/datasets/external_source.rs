//! External sources: documents and labels read from existing tables by SQL named in config.
//!
//! Each query's rows are read as JSON (`to_jsonb(row)`), so a query may return any column
//! types: `tags` may be text (split on commas) or an array; `value` may be boolean, a number
//! (non-zero is true) or text ("true"/"1"/"yes").
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;

use super::documents::{insert_annotations, upsert_documents, NewAnnotation, NewDocument};
use crate::config::ExternalSource;

fn text(row: &Value, key: &str) -> Option<String> {
    match row.get(key)? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn tags(row: &Value) -> Vec<String> {
    match row.get("tags") {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(s)) => s
            .split(',')
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect(),
        _ => Vec::new(),
    }
}

fn truthy(v: Option<&Value>) -> Option<bool> {
    match v? {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => Some(n.as_f64()? != 0.0),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "t" | "1" | "yes" | "y" => Some(true),
            "false" | "f" | "0" | "no" | "n" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// Copies an external source into trainyard's tables (idempotent). Returns (documents, annotations).
pub async fn import_source(
    pool: &PgPool,
    name: &str,
    source: &ExternalSource,
) -> anyhow::Result<(usize, usize)> {
    let external = match &source.database_url {
        Some(url) => PgPool::connect(url).await?,
        None => pool.clone(),
    };
    let doc_rows: Vec<Value> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT to_jsonb(q) FROM ({}) AS q",
        source.documents_sql
    )))
    .fetch_all(&external)
    .await?;
    let docs: Vec<NewDocument> = doc_rows
        .iter()
        .filter_map(|row| {
            Some(NewDocument {
                source: name.to_string(),
                external_id: text(row, "external_id")?,
                title: text(row, "title"),
                description: text(row, "description"),
                tags: tags(row),
                text: text(row, "text"),
                metadata: serde_json::json!({}),
            })
        })
        .collect();
    let ann_rows: Vec<Value> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT to_jsonb(q) FROM ({}) AS q",
        source.annotations_sql
    )))
    .fetch_all(&external)
    .await?;
    let annotations: Vec<NewAnnotation> = ann_rows
        .iter()
        .filter_map(|row| {
            let at = row
                .get("annotated_at")
                .and_then(|v| v.as_str())
                .and_then(|s| {
                    DateTime::parse_from_rfc3339(s)
                        .ok()
                        .map(|t| t.with_timezone(&Utc))
                        .or_else(|| {
                            chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                                .ok()
                                .map(|t| t.and_utc())
                        })
                });
            Some(NewAnnotation {
                source: name.to_string(),
                external_id: text(row, "external_id")?,
                annotator: text(row, "annotator").unwrap_or_else(|| "unknown".into()),
                label: text(row, "label").unwrap_or_else(|| "label".into()),
                value: truthy(row.get("value"))?,
                annotated_at: at.unwrap_or(DateTime::UNIX_EPOCH),
            })
        })
        .collect();
    let mut tx = pool.begin().await?;
    for chunk in docs.chunks(5000) {
        upsert_documents(&mut tx, chunk).await?;
    }
    for chunk in annotations.chunks(5000) {
        insert_annotations(&mut tx, chunk).await?;
    }
    tx.commit().await?;
    Ok((docs.len(), annotations.len()))
}
