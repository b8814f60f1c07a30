//! Batch scoring and evaluations: a model version scores whole corpora on the worker pool, and
//! versions are compared on the same labelled records before one is promoted.
//!
//! A scoring job is planned by a `score` job without a chunk (select documents, find the ones
//! whose score for this version is missing, store them in chunks, fan out one `score` job per
//! chunk in the same transaction); each chunk job runs the version on its worker (the same
//! `TextEncoder` + classifier as `serve`) and upserts `document_scores`, keyed by (model,
//! version, document), marking its chunk done in the same transaction. An evaluation is one
//! scoring job per version on a dataset split; the chunk that completes the last of them
//! enqueues the `evaluate` job, which computes the metrics side by side and applies the
//! evaluation's promotion gate.
//!
//! Dependencies point one way: `evaluation` uses `store` (it creates, cancels and checks its
//! scoring jobs there); `store`, `plan` and `chunk` know an evaluation only as the id a scoring
//! job belongs to, and tell it what happened to that job through one hook (`store::report`
//! calls `evaluation::on_scoring_job_outcome`). A failure is a [`ScoringError`], which says
//! whether a job should try again.
pub mod chunk;
pub mod error;
pub mod evaluation;
pub mod export;
pub mod plan;
pub mod store;

pub use error::ScoringError;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::datasets::Selection;

/// What a scoring job scores: selected documents (as a dataset selects them) or the records
/// of a dataset, optionally one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ScoringTarget {
    Dataset {
        dataset_id: Uuid,
        #[serde(default)]
        split: Option<String>,
    },
    Documents {
        selection: Selection,
    },
}

/// One document's result as the API and the exports show it.
#[derive(Debug, Clone, Serialize)]
pub struct ScoredDocument {
    pub position: i32,
    pub document_id: i64,
    pub source: String,
    pub external_id: String,
    pub version: i32,
    /// label -> probability, in the version's label order.
    pub scores: Vec<(String, f32)>,
    /// Labels scoring `>=` the job's threshold.
    pub positive_labels: Vec<String>,
}

/// Positive labels of one score row (the comparison training and inference use).
pub fn positive_labels(labels: &[String], scores: &[f32], thresholds: &[f32]) -> Vec<String> {
    crate::inference::decide(labels, scores, thresholds).positive_labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_round_trip_through_their_stored_json() {
        let d = ScoringTarget::Dataset {
            dataset_id: Uuid::nil(),
            split: Some("test".into()),
        };
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(serde_json::from_value::<ScoringTarget>(v).unwrap(), d);
        let s = ScoringTarget::Documents {
            selection: Selection {
                sources: vec!["mail".into()],
                ..Selection::default()
            },
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["selection"]["sources"][0], "mail");
        assert_eq!(serde_json::from_value::<ScoringTarget>(v).unwrap(), s);
    }

    #[test]
    fn a_score_equal_to_its_threshold_is_positive() {
        let labels = vec!["a".to_string(), "b".to_string()];
        assert_eq!(
            positive_labels(&labels, &[0.5, 0.2], &[0.5, 0.1]),
            vec!["a".to_string(), "b".to_string()]
        );
        assert!(positive_labels(&labels, &[0.49, 0.0], &[0.5, 0.1]).is_empty());
    }
}
