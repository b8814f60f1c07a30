//! Datasets: documents and annotations in, consensus-labelled, split, embedded records out.
pub mod build;
pub mod consensus;
pub mod documents;
pub mod embed_job;
pub mod error;
pub mod export;
pub mod external_source;
pub mod import_parse;
pub mod splits;
pub mod store;
pub mod text;

pub use error::DatasetError;

use serde::{Deserialize, Serialize};

use crate::config::TieRule;

/// Which documents a dataset takes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    /// Whole sources.
    #[serde(default)]
    pub sources: Vec<String>,
    /// Documents by trainyard id.
    #[serde(default)]
    pub document_ids: Vec<i64>,
    /// Documents by external id inside `source`.
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub external_ids: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskType {
    Binary,
    MultiClass,
    MultiLabel,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitRatios {
    pub train: f64,
    pub validation: f64,
    pub test: f64,
    pub seed: u64,
}

/// Everything a build needs, stored with the dataset (`datasets.request`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetSpec {
    pub selection: Selection,
    pub embedding_model: String,
    pub force_regenerate: bool,
    pub task_type: TaskType,
    pub labels: Vec<String>,
    pub splits: SplitRatios,
    pub tie_rule: TieRule,
    pub max_text_chars: usize,
}
