//! What a `train` job reads: the run's stored settings and the dataset's three splits.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use serde_json::json;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::webhook::WebhookConfig;
use super::TrainingError;
use crate::datasets::TaskType;
use crate::ml::classifier::TrainMode;
use crate::ml::trainer::{Hyperparameters, SplitData, SplitInputs, VectorRows};

/// A run's stored settings.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub id: Uuid,
    pub dataset_id: Uuid,
    pub model_name: String,
    pub mode: TrainMode,
    pub task: TaskType,
    pub labels: Vec<String>,
    pub hyperparameters: Hyperparameters,
    pub device: String,
    pub auto_promote: bool,
    /// `auto_promote` must first win an evaluation on this dataset split.
    pub promotion_gate: Option<crate::scoring::evaluation::GateSettings>,
    pub webhook: Option<WebhookConfig>,
    pub status: super::runs::RunStatus,
    pub model_version: Option<i32>,
    /// Finetune: the local embedding model the encoder starts from (None: `local_model.dir`,
    /// for runs created before base models could be chosen).
    pub base_model: Option<String>,
}

pub async fn load_run(pool: &PgPool, id: Uuid) -> Result<Option<RunSettings>, TrainingError> {
    let Some(row) = sqlx::query(
        "SELECT id, dataset_id, model_name, mode, task, labels, hyperparameters, device,
                auto_promote, webhook, status, model_version, promotion_gate, base_model
         FROM training_runs WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let bad =
        |what: &str, e: serde_json::Error| TrainingError::Invalid(format!("run {id}: {what}: {e}"));
    let webhook: Option<serde_json::Value> = row.get("webhook");
    Ok(Some(RunSettings {
        id,
        dataset_id: row.get("dataset_id"),
        model_name: row.get("model_name"),
        mode: serde_json::from_value(json!(row.get::<String, _>("mode")))
            .map_err(|e| bad("mode", e))?,
        task: serde_json::from_value(json!(row.get::<String, _>("task")))
            .map_err(|e| bad("task", e))?,
        labels: serde_json::from_value(row.get("labels")).map_err(|e| bad("labels", e))?,
        hyperparameters: serde_json::from_value(row.get("hyperparameters"))
            .map_err(|e| bad("hyperparameters", e))?,
        device: row.get("device"),
        auto_promote: row.get("auto_promote"),
        promotion_gate: row
            .get::<Option<serde_json::Value>, _>("promotion_gate")
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| bad("promotion_gate", e))?,
        webhook: webhook
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| bad("webhook", e))?,
        status: row.get("status"),
        model_version: row.get("model_version"),
        base_model: row.get("base_model"),
    }))
}

/// One split while it is read: embeddings, texts, targets.
type SplitRows = (VectorRows, Vec<String>, Vec<Vec<Option<bool>>>);

/// Positives and negatives of one label.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LabelCounts {
    pub positives: i64,
    pub negatives: i64,
}

impl LabelCounts {
    fn add(&mut self, positive: bool) {
        if positive {
            self.positives += 1;
        } else {
            self.negatives += 1;
        }
    }
}

/// What one label was learned from: the training split's positives and negatives, in all and
/// per source. A source missing from `sources` never annotated the label in the training split
/// (the label was masked on its records): a score for it on that source's texts extrapolates.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LabelCoverage {
    #[serde(flatten)]
    pub total: LabelCounts,
    pub sources: BTreeMap<String, LabelCounts>,
}

/// The three splits the run trains, validates and tests on, and the training split's label
/// coverage (label -> what it was learned from), counted from the same rows.
pub(super) struct Splits {
    pub train: SplitData,
    pub validation: SplitData,
    pub test: SplitData,
    pub label_coverage: BTreeMap<String, LabelCoverage>,
}

pub(super) async fn load_splits(
    pool: &PgPool,
    run: &RunSettings,
    embedding_model: &str,
    dimensions: i32,
    memory_cap_mb: usize,
) -> Result<Splits, TrainingError> {
    let head = run.mode == TrainMode::Head;
    // Streamed: the job holds the vectors (head) or texts (finetune) it trains on, never the
    // rows they came in. A head reads no text, a finetune no vector.
    let mut rows = sqlx::query(
        "SELECT r.split, r.source, r.labels, CASE WHEN $4 THEN NULL ELSE r.text END AS text,
                CASE WHEN $4 THEN e.vector END AS vector
         FROM dataset_records r
         LEFT JOIN embeddings e ON $4 AND e.model = $2 AND e.dimensions = $3 AND e.checksum = r.checksum
         WHERE r.dataset_id = $1 ORDER BY r.position",
    )
    .bind(run.dataset_id)
    .bind(embedding_model)
    .bind(dimensions)
    .bind(run.mode == TrainMode::Head)
    .fetch(pool);
    // Each split's vectors stay in memory up to `training.head_vectors_in_memory_mb`; a larger
    // split is spilled to a temporary file and read a batch at a time.
    let cap = memory_cap_mb * (1 << 20);
    let dims = dimensions as usize;
    let new_split = || (VectorRows::new(dims, cap), Vec::new(), Vec::new());
    let mut splits: [SplitRows; 3] = [new_split(), new_split(), new_split()];
    // Every label of the run has an entry, also one no training record annotated.
    let mut coverage: BTreeMap<String, LabelCoverage> = run
        .labels
        .iter()
        .map(|l| (l.clone(), LabelCoverage::default()))
        .collect();
    while let Some(row) = rows.try_next().await? {
        let labels: serde_json::Value = row.get("labels");
        let targets: Vec<Option<bool>> = run
            .labels
            .iter()
            .map(|l| labels.get(l).and_then(|v| v.as_i64()).map(|v| v == 1))
            .collect();
        if targets.iter().all(Option::is_none) {
            continue; // nothing annotated: contributes nothing anywhere
        }
        let index = match row.get::<String, _>("split").as_str() {
            "train" => 0,
            "validation" => 1,
            _ => 2,
        };
        if index == 0 {
            let source: String = row.get("source");
            for (label, target) in run.labels.iter().zip(&targets) {
                let Some(positive) = *target else { continue };
                let c = coverage.get_mut(label).expect("every label has an entry");
                c.total.add(positive);
                c.sources.entry(source.clone()).or_default().add(positive);
            }
        }
        let split = &mut splits[index];
        if head {
            let vector: Option<Vec<u8>> = row.get("vector");
            let vector = vector.ok_or_else(|| {
                TrainingError::Invalid(format!(
                    "dataset {} has a record without a stored embedding",
                    run.dataset_id
                ))
            })?;
            let vector = crate::embedding::bytes_to_vector(&vector);
            if vector.len() != dims {
                return Err(TrainingError::Invalid(format!(
                    "dataset {} has a stored vector of {} dimensions, not {dims}",
                    run.dataset_id,
                    vector.len()
                )));
            }
            split.0.push(&vector).map_err(|e| {
                TrainingError::Transient(format!("spilling vectors to a file: {e}"))
            })?;
        } else {
            split.1.push(row.get("text"));
        }
        split.2.push(targets);
    }
    let mut spilled = false;
    for split in splits.iter_mut() {
        split
            .0
            .finish()
            .map_err(|e| TrainingError::Transient(format!("spilling vectors to a file: {e}")))?;
        spilled |= split.0.spilled();
    }
    if spilled {
        tracing::info!(run = %run.id, cap_mb = memory_cap_mb, "head training reads its vectors from a temporary file, a batch at a time");
    }
    let [train, validation, test] = splits.map(|(vectors, texts, targets)| SplitData {
        inputs: if head {
            SplitInputs::Embeddings(std::sync::Arc::new(vectors))
        } else {
            SplitInputs::Texts(texts)
        },
        targets,
    });
    if train.is_empty() {
        return Err(TrainingError::Invalid(
            "the dataset's training split has no annotated record".into(),
        ));
    }
    Ok(Splits {
        train,
        validation,
        test,
        label_coverage: coverage,
    })
}
