//! Dataset rows in Postgres: create, read, list, records, delete.
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::DatasetSpec;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DatasetRow {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub status: String,
    pub embedding_model: String,
    pub dimensions: i32,
    pub request: serde_json::Value,
    pub build_job_id: Option<String>,
    pub error: Option<String>,
    pub batches_total: i32,
    pub batches_done: i32,
    pub new_embeddings: i32,
    pub reused_embeddings: i32,
    pub stats: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub ready_at: Option<DateTime<Utc>>,
}

impl DatasetRow {
    pub fn spec(&self) -> Result<DatasetSpec, serde_json::Error> {
        serde_json::from_value(self.request.clone())
    }
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<DatasetRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM datasets WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

pub async fn list(
    pool: &PgPool,
    limit: i64,
    offset: i64,
) -> Result<(Vec<DatasetRow>, i64), sqlx::Error> {
    let rows =
        sqlx::query_as("SELECT * FROM datasets ORDER BY created_at DESC, id LIMIT $1 OFFSET $2")
            .bind(limit)
            .bind(offset)
            .fetch_all(pool)
            .await?;
    let total = sqlx::query_scalar("SELECT count(*) FROM datasets")
        .fetch_one(pool)
        .await?;
    Ok((rows, total))
}

/// Deletes a dataset and its records; shared embeddings stay. Cancels its unfinished jobs.
pub async fn delete(pool: &PgPool, id: Uuid) -> Result<bool, crate::queue::QueueError> {
    let mut tx = pool.begin().await?;
    crate::queue::cancel_owned_jobs(&mut tx, crate::queue::Owner::Dataset(id)).await?;
    let gone = sqlx::query("DELETE FROM datasets WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(gone.rows_affected() > 0)
}

#[derive(Debug, Clone, Serialize)]
pub struct RecordRow {
    pub position: i32,
    pub document_id: i64,
    pub source: String,
    pub external_id: String,
    pub checksum: String,
    pub text: String,
    pub split: String,
    pub labels: serde_json::Value,
    pub votes: serde_json::Value,
    pub disagreement: bool,
    /// Present when asked for and stored.
    pub embedding: Option<Vec<f32>>,
}

/// Records in position order; `split` filters; `with_embeddings` joins the stored vectors.
pub async fn records(
    pool: &PgPool,
    dataset: &DatasetRow,
    split: Option<&str>,
    with_embeddings: bool,
    limit: i64,
    offset: i64,
) -> Result<(Vec<RecordRow>, i64), sqlx::Error> {
    let rows = sqlx::query(
        "SELECT r.position, r.document_id, r.source, r.external_id, r.checksum, r.text, r.split, r.labels,
                r.votes, r.disagreement, CASE WHEN $6 THEN e.vector END AS vector
         FROM dataset_records r
         LEFT JOIN embeddings e ON $6 AND e.model = $2 AND e.dimensions = $3 AND e.checksum = r.checksum
         WHERE r.dataset_id = $1 AND ($4::text IS NULL OR r.split = $4)
         ORDER BY r.position LIMIT $5 OFFSET $7",
    )
    .bind(dataset.id)
    .bind(&dataset.embedding_model)
    .bind(dataset.dimensions)
    .bind(split)
    .bind(limit)
    .bind(with_embeddings)
    .bind(offset)
    .fetch_all(pool)
    .await?;
    let total: i64 =
        sqlx::query_scalar("SELECT count(*) FROM dataset_records WHERE dataset_id = $1 AND ($2::text IS NULL OR split = $2)")
            .bind(dataset.id)
            .bind(split)
            .fetch_one(pool)
            .await?;
    let records = rows
        .iter()
        .map(|r| RecordRow {
            position: r.get("position"),
            document_id: r.get("document_id"),
            source: r.get("source"),
            external_id: r.get("external_id"),
            checksum: r.get("checksum"),
            text: r.get("text"),
            split: r.get("split"),
            labels: r.get("labels"),
            votes: r.get("votes"),
            disagreement: r.get("disagreement"),
            embedding: r
                .get::<Option<Vec<u8>>, _>("vector")
                .map(|b| crate::embedding::bytes_to_vector(&b)),
        })
        .collect();
    Ok((records, total))
}
