//! The model registry in Postgres: versions with their weights, labels, thresholds and metrics;
//! promotion and rollback, announced to every API process with NOTIFY.
//!
//! The served version of a model is `models.served_version`. Every promotion or rollback is
//! appended to `model_promotions`; rollback replays that log as a stack (promotions push,
//! rollbacks pop) and serves the version below the top. NOTIFY is transactional: it is
//! delivered when the promotion commits, never for one that rolled back.
pub mod export;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

/// The LISTEN/NOTIFY channel; the payload is `{"name": …, "version": …}`.
pub const CHANNEL: &str = "trainyard_models";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    pub name: String,
    pub served_version: Option<i32>,
    pub latest_version: Option<i32>,
    pub versions: i64,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VersionSummary {
    pub name: String,
    pub version: i32,
    pub served: bool,
    pub run_id: Option<Uuid>,
    pub dataset_id: Option<Uuid>,
    pub spec: serde_json::Value,
    pub embedding_model: String,
    pub thresholds: serde_json::Value,
    pub metrics: serde_json::Value,
    pub weights_bytes: i64,
    pub label_coverage: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
}

/// A version as the inference side loads it.
pub struct StoredVersion {
    pub name: String,
    pub version: i32,
    pub spec: serde_json::Value,
    pub embedding_model: String,
    pub thresholds: Vec<f32>,
    pub weights: Vec<u8>,
}

/// A finished run's model, as the registry stores it. The registry owns this shape; training
/// fills it in (metrics and spec arrive as JSON, so the registry knows no training types).
pub struct NewVersion<'a> {
    pub run_id: Uuid,
    pub dataset_id: Uuid,
    pub model_name: &'a str,
    pub labels: &'a [String],
    pub auto_promote: bool,
    /// `auto_promote` waits for an evaluation (the run's promotion gate) whenever another
    /// version is served: the registry then promotes only when nothing is.
    pub promotion_gated: bool,
    pub embedding_model: &'a str,
    pub spec: serde_json::Value,
    pub weights: &'a [u8],
    pub thresholds: &'a [f32],
    pub validation: serde_json::Value,
    /// Validation macro-F1, compared with the served version's for `auto_promote`; `None` when
    /// the run had no validation split.
    pub validation_macro_f1: Option<f64>,
    pub test: serde_json::Value,
    pub best_epoch: u32,
    pub best_metric: f64,
    pub device: &'a str,
    /// What became of the run's telemetry webhook events.
    pub telemetry: serde_json::Value,
    /// Per label: `{positives, negatives, sources: {SOURCE: {positives, negatives}}}` of the
    /// training split (a source absent from a label never annotated it: masked there).
    pub label_coverage: serde_json::Value,
}

/// Stores a finished run's model as the next version of its name, marks the run succeeded and,
/// when asked, promotes it if its validation macro-F1 beats the served version's (or nothing is
/// served; a version without validation figures never replaces a served one: there is no
/// evidence that it is better). One transaction; a run registers at most one version
/// (re-running returns the same one).
pub async fn register_version(pool: &PgPool, new: &NewVersion<'_>) -> Result<i32, RegistryError> {
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO models (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
        .bind(new.model_name)
        .execute(&mut *tx)
        .await?;
    // Serialises version numbering per model name.
    let served: Option<i32> =
        sqlx::query_scalar("SELECT served_version FROM models WHERE name = $1 FOR UPDATE")
            .bind(new.model_name)
            .fetch_one(&mut *tx)
            .await?;
    let existing: Option<i32> =
        sqlx::query_scalar("SELECT version FROM model_versions WHERE run_id = $1")
            .bind(new.run_id)
            .fetch_optional(&mut *tx)
            .await?;
    let version = match existing {
        Some(v) => v,
        None => {
            let next: i32 = sqlx::query_scalar(
                "SELECT coalesce(max(version), 0) + 1 FROM model_versions WHERE name = $1",
            )
            .bind(new.model_name)
            .fetch_one(&mut *tx)
            .await?;
            let weights = crate::artifacts::write(&mut tx, new.weights).await?;
            sqlx::query(
                "INSERT INTO model_versions (name, version, run_id, dataset_id, spec, embedding_model,
                                             thresholds, metrics, weights_artifact, weights_size,
                                             label_coverage)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(new.model_name)
            .bind(next)
            .bind(new.run_id)
            .bind(new.dataset_id)
            .bind(&new.spec)
            .bind(new.embedding_model)
            .bind(serde_json::json!(new.thresholds))
            .bind(serde_json::json!({"validation": new.validation, "test": new.test}))
            .bind(weights)
            .bind(new.weights.len() as i64)
            .bind(&new.label_coverage)
            .execute(&mut *tx)
            .await?;
            next
        }
    };
    let thresholds: serde_json::Map<String, serde_json::Value> = new
        .labels
        .iter()
        .zip(new.thresholds)
        .map(|(l, t)| (l.clone(), serde_json::json!(t)))
        .collect();
    sqlx::query(
        "UPDATE training_runs SET status = 'succeeded', finished_at = now(), updated_at = now(),
                model_version = $2, best_epoch = $3, best_metric = $4, test_metrics = $5,
                thresholds = $6, telemetry = $7, device_used = $8, error = NULL,
                validation_metrics = $9
         WHERE id = $1",
    )
    .bind(new.run_id)
    .bind(version)
    .bind(new.best_epoch as i32)
    .bind(new.best_metric)
    .bind(&new.test)
    .bind(serde_json::Value::Object(thresholds))
    .bind(&new.telemetry)
    .bind(new.device)
    .bind(&new.validation)
    .execute(&mut *tx)
    .await?;
    let dropped: Vec<(Option<Uuid>, Option<Uuid>)> = sqlx::query_as(
        "DELETE FROM training_checkpoints WHERE run_id = $1
         RETURNING state_artifact, best_weights_artifact",
    )
    .bind(new.run_id)
    .fetch_all(&mut *tx)
    .await?;
    for id in dropped.into_iter().flat_map(|(a, b)| [a, b]).flatten() {
        crate::artifacts::delete(&mut tx, id).await?;
    }
    if new.auto_promote && existing.is_none() {
        let served_f1: Option<f64> = match served {
            Some(v) => sqlx::query_scalar(
                "SELECT (metrics->'validation'->>'macro_f1')::float8 FROM model_versions
                 WHERE name = $1 AND version = $2",
            )
            .bind(new.model_name)
            .bind(v)
            .fetch_optional(&mut *tx)
            .await?
            .flatten(),
            None => None,
        };
        let better = match (served, new.validation_macro_f1) {
            (None, _) => true,
            (Some(_), _) if new.promotion_gated => false,
            (Some(_), None) => false,
            (Some(_), Some(f1)) => served_f1.is_none_or(|served| f1 > served),
        };
        if better {
            promote_in_tx(&mut tx, new.model_name, version, "auto_promote").await?;
        }
    }
    tx.commit().await?;
    Ok(version)
}

/// Serves `version` of `name` (inside the caller's transaction) and announces it.
pub async fn promote_in_tx(
    conn: &mut PgConnection,
    name: &str,
    version: i32,
    action: &str,
) -> Result<Option<i32>, RegistryError> {
    let previous: Option<Option<i32>> =
        sqlx::query_scalar("SELECT served_version FROM models WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_optional(&mut *conn)
            .await?;
    let Some(previous) = previous else {
        return Err(RegistryError::NotFound(format!(
            "model `{name}` does not exist"
        )));
    };
    let exists: Option<i32> =
        sqlx::query_scalar("SELECT version FROM model_versions WHERE name = $1 AND version = $2")
            .bind(name)
            .bind(version)
            .fetch_optional(&mut *conn)
            .await?;
    if exists.is_none() {
        return Err(RegistryError::NotFound(format!(
            "model `{name}` has no version {version}"
        )));
    }
    serve(conn, name, version, action, previous).await?;
    Ok(previous)
}

/// Makes `version` the served one, logs the change and announces it (NOTIFY is delivered when
/// the caller's transaction commits).
async fn serve(
    conn: &mut PgConnection,
    name: &str,
    version: i32,
    action: &str,
    previous: Option<i32>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE models SET served_version = $2, updated_at = now() WHERE name = $1")
        .bind(name)
        .bind(version)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO model_promotions (name, version, action, previous) VALUES ($1, $2, $3, $4)",
    )
    .bind(name)
    .bind(version)
    .bind(action)
    .bind(previous)
    .execute(&mut *conn)
    .await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(serde_json::json!({"name": name, "version": version}).to_string())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub async fn promote(
    pool: &PgPool,
    name: &str,
    version: i32,
) -> Result<Option<i32>, RegistryError> {
    let mut tx = pool.begin().await?;
    let previous = promote_in_tx(&mut tx, name, version, "promote").await?;
    tx.commit().await?;
    Ok(previous)
}

/// Serves the version that was served before the current one. Returns (from, to).
pub async fn rollback(pool: &PgPool, name: &str) -> Result<(i32, i32), RegistryError> {
    let mut tx = pool.begin().await?;
    let rows =
        sqlx::query("SELECT version, action FROM model_promotions WHERE name = $1 ORDER BY id")
            .bind(name)
            .fetch_all(&mut *tx)
            .await?;
    let mut stack: Vec<i32> = Vec::new();
    for row in rows {
        let version: i32 = row.get("version");
        if row.get::<String, _>("action") == "rollback" {
            stack.pop();
        } else {
            stack.push(version);
        }
    }
    let current: Option<Option<i32>> =
        sqlx::query_scalar("SELECT served_version FROM models WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(Some(current)) = current else {
        return Err(RegistryError::NotFound(format!(
            "model `{name}` does not exist or serves no version"
        )));
    };
    if stack.len() < 2 {
        return Err(RegistryError::Conflict(format!(
            "model `{name}` has no earlier promoted version to roll back to"
        )));
    }
    let target = stack[stack.len() - 2];
    serve(&mut tx, name, target, "rollback", Some(current)).await?;
    tx.commit().await?;
    Ok((current, target))
}

pub async fn list_models(pool: &PgPool) -> Result<Vec<ModelSummary>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT m.name, m.served_version, m.updated_at, max(v.version) AS latest, count(v.version) AS versions
         FROM models m LEFT JOIN model_versions v ON v.name = m.name
         GROUP BY m.name ORDER BY m.name",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| ModelSummary {
            name: r.get("name"),
            served_version: r.get("served_version"),
            latest_version: r.get("latest"),
            versions: r.get("versions"),
            updated_at: r.get("updated_at"),
        })
        .collect())
}

/// Versions of a model, newest first; None when the model does not exist.
pub async fn list_versions(
    pool: &PgPool,
    name: &str,
) -> Result<Option<Vec<VersionSummary>>, sqlx::Error> {
    let served: Option<Option<i32>> =
        sqlx::query_scalar("SELECT served_version FROM models WHERE name = $1")
            .bind(name)
            .fetch_optional(pool)
            .await?;
    let Some(served) = served else {
        return Ok(None);
    };
    let rows = sqlx::query(
        "SELECT name, version, run_id, dataset_id, spec, embedding_model, thresholds, metrics,
                coalesce(weights_size, octet_length(weights))::bigint AS weights_bytes,
                label_coverage, created_at
         FROM model_versions WHERE name = $1 ORDER BY version DESC",
    )
    .bind(name)
    .fetch_all(pool)
    .await?;
    Ok(Some(
        rows.iter()
            .map(|r| {
                let version: i32 = r.get("version");
                VersionSummary {
                    name: r.get("name"),
                    version,
                    served: served == Some(version),
                    run_id: r.get("run_id"),
                    dataset_id: r.get("dataset_id"),
                    spec: r.get("spec"),
                    embedding_model: r.get("embedding_model"),
                    thresholds: r.get("thresholds"),
                    metrics: r.get("metrics"),
                    weights_bytes: r.get("weights_bytes"),
                    label_coverage: r.get("label_coverage"),
                    created_at: r.get("created_at"),
                }
            })
            .collect(),
    ))
}

/// Every served (name, version), most recently changed first.
pub async fn served_versions(pool: &PgPool) -> Result<Vec<(String, i32)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT name, served_version FROM models WHERE served_version IS NOT NULL
         ORDER BY updated_at DESC, name",
    )
    .fetch_all(pool)
    .await
}

/// A version's labels, thresholds and embedding model, without its weights (what a scoring
/// job or an evaluation records about it).
pub struct VersionMeta {
    pub labels: Vec<String>,
    pub thresholds: Vec<f32>,
    pub embedding_model: String,
    /// `head` or `finetune`.
    pub mode: String,
}

/// `None` when the model has no such version.
pub async fn version_meta(
    pool: &PgPool,
    name: &str,
    version: i32,
) -> Result<Option<VersionMeta>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT spec, embedding_model, thresholds FROM model_versions WHERE name = $1 AND version = $2",
    )
    .bind(name)
    .bind(version)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| {
        let spec: serde_json::Value = r.get("spec");
        let labels: Vec<String> =
            serde_json::from_value(spec["labels"].clone()).unwrap_or_default();
        let mut thresholds: Vec<f32> =
            serde_json::from_value(r.get("thresholds")).unwrap_or_default();
        thresholds.resize(labels.len(), 0.5);
        VersionMeta {
            labels,
            thresholds,
            embedding_model: r.get("embedding_model"),
            mode: spec["mode"].as_str().unwrap_or("head").to_string(),
        }
    }))
}

/// The served version of a model: `None` when the model does not exist, `Some(None)` when it
/// exists and serves nothing.
pub async fn served_version(pool: &PgPool, name: &str) -> Result<Option<Option<i32>>, sqlx::Error> {
    sqlx::query_scalar("SELECT served_version FROM models WHERE name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await
}

pub async fn load_version(
    pool: &PgPool,
    name: &str,
    version: i32,
) -> Result<Option<StoredVersion>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT spec, embedding_model, thresholds, weights, weights_artifact FROM model_versions
         WHERE name = $1 AND version = $2",
    )
    .bind(name)
    .bind(version)
    .fetch_optional(pool)
    .await?;
    let Some(r) = row else {
        return Ok(None);
    };
    let weights =
        crate::artifacts::read_either(pool, r.get("weights_artifact"), r.get("weights")).await?;
    Ok(Some(StoredVersion {
        name: name.to_string(),
        version,
        spec: r.get("spec"),
        embedding_model: r.get("embedding_model"),
        thresholds: serde_json::from_value(r.get("thresholds")).unwrap_or_default(),
        weights,
    }))
}
