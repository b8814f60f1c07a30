//! Ingest: batch upsert of documents (by source + external id) and annotations.
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NewDocument {
    pub source: String,
    pub external_id: String,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub metadata: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewAnnotation {
    pub source: String,
    pub external_id: String,
    pub annotator: String,
    pub label: String,
    pub value: bool,
    pub annotated_at: DateTime<Utc>,
}

/// [`upsert_documents`] on a connection of the pool; returns (inserted, updated).
pub async fn upsert_documents_in_pool(
    pool: &PgPool,
    docs: &[NewDocument],
) -> Result<(u64, u64), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    upsert_documents(&mut conn, docs).await
}

/// Upserts documents; returns (inserted, updated).
pub async fn upsert_documents(
    conn: &mut PgConnection,
    docs: &[NewDocument],
) -> Result<(u64, u64), sqlx::Error> {
    if docs.is_empty() {
        return Ok((0, 0));
    }
    // Last one wins when a batch names the same document twice.
    let mut unique: std::collections::HashMap<(&str, &str), &NewDocument> =
        std::collections::HashMap::new();
    for d in docs {
        unique.insert((&d.source, &d.external_id), d);
    }
    let docs: Vec<&NewDocument> = unique.into_values().collect();
    let col = |f: fn(&NewDocument) -> Option<String>| docs.iter().map(|d| f(d)).collect::<Vec<_>>();
    let tags: Vec<String> = docs
        .iter()
        .map(|d| serde_json::to_string(&d.tags).unwrap_or_default())
        .collect();
    let metadata: Vec<serde_json::Value> = docs
        .iter()
        .map(|d| {
            if d.metadata.is_null() {
                serde_json::json!({})
            } else {
                d.metadata.clone()
            }
        })
        .collect();
    let rows: Vec<(bool,)> = sqlx::query_as(
        "INSERT INTO documents (source, external_id, title, description, tags, body, metadata)
         SELECT s, e, t, d, ARRAY(SELECT jsonb_array_elements_text(g::jsonb)), b, m
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::jsonb[])
              AS u(s, e, t, d, g, b, m)
         ON CONFLICT (source, external_id) DO UPDATE SET
            title = EXCLUDED.title, description = EXCLUDED.description, tags = EXCLUDED.tags,
            body = EXCLUDED.body, metadata = EXCLUDED.metadata, updated_at = now()
         RETURNING (xmax = 0)",
    )
    .bind(col(|d| Some(d.source.clone())))
    .bind(col(|d| Some(d.external_id.clone())))
    .bind(col(|d| d.title.clone()))
    .bind(col(|d| d.description.clone()))
    .bind(&tags)
    .bind(col(|d| d.text.clone()))
    .bind(&metadata)
    .fetch_all(&mut *conn)
    .await?;
    let inserted = rows.iter().filter(|r| r.0).count() as u64;
    Ok((inserted, rows.len() as u64 - inserted))
}

/// [`insert_annotations`] all or none, in one transaction: when any names a document that does
/// not exist, nothing is stored. Returns (inserted, external ids that name no document).
pub async fn insert_annotations_all_or_none(
    pool: &PgPool,
    annotations: &[NewAnnotation],
) -> Result<(u64, Vec<String>), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let (inserted, missing) = insert_annotations(&mut tx, annotations).await?;
    if missing.is_empty() {
        tx.commit().await?;
    }
    Ok((inserted, missing))
}

/// Inserts annotations (idempotent on document, annotator, label, time). Returns
/// (inserted, external ids that name no document).
pub async fn insert_annotations(
    conn: &mut PgConnection,
    annotations: &[NewAnnotation],
) -> Result<(u64, Vec<String>), sqlx::Error> {
    if annotations.is_empty() {
        return Ok((0, Vec::new()));
    }
    let sources: Vec<&str> = annotations.iter().map(|a| a.source.as_str()).collect();
    let ids: Vec<&str> = annotations.iter().map(|a| a.external_id.as_str()).collect();
    let missing: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT u.s || '/' || u.e FROM UNNEST($1::text[], $2::text[]) AS u(s, e)
         WHERE NOT EXISTS (SELECT 1 FROM documents d WHERE d.source = u.s AND d.external_id = u.e)",
    )
    .bind(&sources)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let done = sqlx::query(
        "INSERT INTO annotations (document_id, annotator, label, value, annotated_at)
         SELECT d.id, u.a, u.l, u.v, u.t
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bool[], $6::timestamptz[])
              AS u(s, e, a, l, v, t)
         JOIN documents d ON d.source = u.s AND d.external_id = u.e
         ON CONFLICT (document_id, annotator, label, annotated_at) DO UPDATE SET value = EXCLUDED.value",
    )
    .bind(&sources)
    .bind(&ids)
    .bind(annotations.iter().map(|a| a.annotator.as_str()).collect::<Vec<_>>())
    .bind(annotations.iter().map(|a| a.label.as_str()).collect::<Vec<_>>())
    .bind(annotations.iter().map(|a| a.value).collect::<Vec<_>>())
    .bind(annotations.iter().map(|a| a.annotated_at).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    Ok((done.rows_affected(), missing))
}
