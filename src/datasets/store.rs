//! Dataset rows in Postgres: create (row and build job in one transaction), read, list,
//! records, delete, and what cancelling or retrying a dataset's jobs does to the dataset.

/// The record page query ($1 dataset, $2 model, $3 dimensions, $4 first position, $5 limit,
/// $6 with vectors) followed by one page's condition and order.
macro_rules! concat_records_page {
    ($tail:literal) => {
        concat!(
            "SELECT r.position, r.document_id, r.source, r.external_id, r.checksum, r.text, r.split, r.labels, ",
            "r.votes, r.disagreement, e.vector FROM dataset_records r ",
            "LEFT JOIN LATERAL (SELECT v.vector FROM embeddings v ",
            "WHERE v.model = $2 AND v.dimensions = $3 AND v.checksum = r.checksum LIMIT 1) e ON $6 ",
            "WHERE r.dataset_id = $1 ",
            $tail
        )
    };
}
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool, Row};
use trainyard_jobs::{DatasetBuildArgs, JobKind};
use uuid::Uuid;

use super::DatasetSpec;
use crate::queue::{self, NewJob, Owner, QueueError};

crate::db::text_enum! {
    /// A dataset's state (`datasets.status`): `pending` until its build starts, `building`
    /// while it selects and fans out, `embedding` until its last batch is stored, then `ready`;
    /// or `failed` / `cancelled`.
    pub enum DatasetStatus {
        Pending = "pending",
        Building = "building",
        Embedding = "embedding",
        Ready = "ready",
        Failed = "failed",
        Cancelled = "cancelled",
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DatasetRow {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    pub status: DatasetStatus,
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

/// A dataset to build: its name, what it is built from, and the size of its model's vectors.
pub struct NewDataset<'a> {
    pub name: &'a str,
    pub description: &'a str,
    pub spec: &'a DatasetSpec,
    pub dimensions: i32,
}

/// Creates the dataset row and its build job in one transaction. Returns the dataset's id.
pub async fn create(
    pool: &PgPool,
    new: NewDataset<'_>,
    max_attempts: i32,
) -> Result<Uuid, QueueError> {
    let id = Uuid::new_v4();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO datasets (id, name, description, embedding_model, dimensions, request) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(new.name)
    .bind(new.description)
    .bind(&new.spec.embedding_model)
    .bind(new.dimensions)
    .bind(serde_json::to_value(new.spec)?)
    .execute(&mut *tx)
    .await?;
    let job = NewJob {
        kind: JobKind::DatasetBuild,
        args: DatasetBuildArgs { dataset_id: id },
        dataset_id: Some(id),
        scoring_job_id: None,
        progress_total: 1,
    };
    let ids = queue::enqueue(&mut tx, vec![job], max_attempts).await?;
    sqlx::query("UPDATE datasets SET build_job_id = $2 WHERE id = $1")
        .bind(id)
        .bind(&ids[0])
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(id)
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

/// A dataset's build job was cancelled: the dataset, unless it is ready, is cancelled with its
/// unfinished jobs, in one transaction.
pub async fn build_cancelled(pool: &PgPool, id: Uuid) -> Result<(), QueueError> {
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE datasets SET status = 'cancelled', updated_at = now() WHERE id = $1 AND status <> 'ready'")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    queue::cancel_owned_jobs(&mut tx, Owner::Dataset(id)).await?;
    tx.commit().await?;
    Ok(())
}

/// A dataset's failed or cancelled build job goes back in its queue (in the caller's
/// transaction): the dataset is pending again.
pub async fn build_retrying(conn: &mut PgConnection, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE datasets SET status = 'pending', error = NULL, updated_at = now()
         WHERE id = $1 AND status IN ('failed', 'cancelled')",
    )
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Another job of a dataset (an embed batch) goes back in its queue (in the caller's
/// transaction): a failed dataset is embedding again.
pub async fn job_retrying(conn: &mut PgConnection, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE datasets SET status = 'embedding', error = NULL, updated_at = now()
         WHERE id = $1 AND status = 'failed'",
    )
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(())
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

// One record page is the range `[$4, $4 + $5)` of `position` (or of `split_position` inside
// one split; both are dense from 0): a page at any offset is an index range of `limit` rows,
// and a vector one primary-key probe.

/// A page of all records.
pub const RECORDS_PAGE_ALL: &str =
    concat_records_page!("AND r.position >= $4 AND r.position < $4 + $5 ORDER BY r.position");
/// A page of one split (`$7`), `$4` counted inside the split.
pub const RECORDS_PAGE_SPLIT: &str = concat_records_page!(
    "AND r.split = $7 AND r.split_position >= $4 AND r.split_position < $4 + $5 ORDER BY r.split_position"
);

/// Records in position order; `split` filters; `with_embeddings` joins the stored vectors.
/// The total is the build's own count (its stats), not a count over the records.
pub async fn records(
    pool: &PgPool,
    dataset: &DatasetRow,
    split: Option<&str>,
    with_embeddings: bool,
    limit: i64,
    offset: i64,
) -> Result<(Vec<RecordRow>, i64), sqlx::Error> {
    let page = if split.is_some() {
        RECORDS_PAGE_SPLIT
    } else {
        RECORDS_PAGE_ALL
    };
    let mut query = sqlx::query(page)
        .bind(dataset.id)
        .bind(&dataset.embedding_model)
        .bind(dataset.dimensions)
        .bind(offset.min(i32::MAX as i64) as i32)
        .bind(limit)
        .bind(with_embeddings);
    if let Some(split) = split {
        query = query.bind(split);
    }
    let rows = query.fetch_all(pool).await?;
    let stored_total = dataset.stats.as_ref().and_then(|stats| match split {
        None => stats["records"].as_i64(),
        Some(split) => stats["splits"][split]["records"].as_i64(),
    });
    let total = match stored_total {
        Some(total) => total,
        // Not built (no records yet) or built before the stats said it.
        None => sqlx::query_scalar(
            "SELECT count(*) FROM dataset_records WHERE dataset_id = $1 AND ($2::text IS NULL OR split = $2)",
        )
        .bind(dataset.id)
        .bind(split)
        .fetch_one(pool)
        .await?,
    };
    Ok((rows.iter().map(record_from_row).collect(), total))
}

/// The records at positions `[from, from + limit)`, with their vectors (an export reads a
/// dataset of any size in pages of constant cost).
pub async fn records_from(
    pool: &PgPool,
    dataset: &DatasetRow,
    from: i32,
    limit: i64,
) -> Result<Vec<RecordRow>, sqlx::Error> {
    let rows = sqlx::query(RECORDS_PAGE_ALL)
        .bind(dataset.id)
        .bind(&dataset.embedding_model)
        .bind(dataset.dimensions)
        .bind(from)
        .bind(limit)
        .bind(true)
        .fetch_all(pool)
        .await?;
    Ok(rows.iter().map(record_from_row).collect())
}

fn record_from_row(r: &sqlx::postgres::PgRow) -> RecordRow {
    RecordRow {
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
    }
}
