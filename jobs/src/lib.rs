//! Job kinds and their arguments: the one serialized contract between the API and the workers.
//!
//! A kind is a stable string that names both the apalis queue and the job in the API; it never
//! changes when Rust types are renamed. Arguments are small (ids, not payloads): the data a job
//! works on lives in Postgres, so a job can be retried or re-run on any worker.
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Every job kind trainyard knows, in one registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Selects documents, computes consensus labels and splits, fans out `embed` jobs.
    DatasetBuild,
    /// Embeds one batch of a dataset's texts and upserts the vectors.
    Embed,
    /// Trains one training run (head or finetune), epoch by epoch, resuming from checkpoints.
    Train,
    /// Batch scoring: plans a scoring job (selects documents, fans out chunks) or scores one
    /// chunk of it with a model version.
    Score,
    /// Computes an evaluation's metrics once every version has been scored; applies its
    /// promotion gate.
    Evaluate,
    /// Computes and stores one ranking of the review queue (`suspect_label`'s out-of-fold fits).
    ReviewRank,
}

impl JobKind {
    pub const ALL: [JobKind; 6] = [
        JobKind::DatasetBuild,
        JobKind::Embed,
        JobKind::Train,
        JobKind::Score,
        JobKind::Evaluate,
        JobKind::ReviewRank,
    ];

    /// The apalis queue name (`apalis.jobs.job_type`) for this kind.
    pub const fn queue(self) -> &'static str {
        match self {
            JobKind::DatasetBuild => "dataset_build",
            JobKind::Embed => "embed",
            JobKind::Train => "train",
            JobKind::Score => "score",
            JobKind::Evaluate => "evaluate",
            JobKind::ReviewRank => "review_rank",
        }
    }

    pub fn from_queue(name: &str) -> Option<JobKind> {
        Self::ALL.into_iter().find(|k| k.queue() == name)
    }
}

/// Arguments of a `dataset_build` job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetBuildArgs {
    pub dataset_id: Uuid,
}

/// Arguments of an `embed` job: one stored batch of one dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbedArgs {
    pub dataset_id: Uuid,
    pub batch_no: i32,
}

/// Arguments of a `train` job: the run's settings live in `training_runs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainArgs {
    pub run_id: Uuid,
}

/// Arguments of a `score` job: without `chunk`, the plan of a scoring job (selection, fan-out);
/// with it, one stored chunk of that job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScoreArgs {
    pub scoring_job_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<i32>,
}

/// Arguments of an `evaluate` job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvaluateArgs {
    pub evaluation_id: Uuid,
}

/// Arguments of a `review_rank` job: its `computing` row of `review_rankings` (which names the
/// model version, strategy, source and label).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewRankArgs {
    pub ranking_id: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_are_stable_strings() {
        assert_eq!(JobKind::DatasetBuild.queue(), "dataset_build");
        assert_eq!(JobKind::Embed.queue(), "embed");
        for kind in JobKind::ALL {
            assert_eq!(JobKind::from_queue(kind.queue()), Some(kind));
        }
        assert_eq!(JobKind::Train.queue(), "train");
        assert_eq!(JobKind::Score.queue(), "score");
        assert_eq!(JobKind::Evaluate.queue(), "evaluate");
        assert_eq!(JobKind::ReviewRank.queue(), "review_rank");
        assert_eq!(JobKind::from_queue("training"), None);
    }
}
