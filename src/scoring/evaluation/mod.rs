//! Evaluations: versions of one model scored on the same dataset split, compared label by
//! label at their stored thresholds and at thresholds tuned on that split, with the records on
//! which their decisions differ; and the promotion gate a training run's `auto_promote` can
//! require.
//!
//! An evaluation is one scoring job per version. The transaction that finishes the last of them
//! (under the evaluation's row lock, so two finishing at once cannot both miss it) moves the
//! evaluation to `evaluating` and enqueues the `evaluate` job, which writes the results, the
//! disagreements and the gate's decision in one transaction, guarded by the status.
//!
//! # Layout and dependencies
//!
//! - this file: the public surface (the types below, the hook, re-exports of the rest);
//! - `store`: every statement on `evaluations` and `evaluation_disagreements`, and the reads the
//!   `evaluate` job makes;
//! - `compute`: the metrics, side by side, and the disagreements, over rows in memory (no SQL,
//!   nothing async);
//! - `gate`: the promotion gate's decision (a pure function) and its application;
//! - `job`: the `evaluate` job, which reads through `store`, computes with `compute`, decides
//!   with `gate` and writes through `store`.
//!
//! Inside, `job` uses `store`, `compute` and `gate`; `gate` uses `store`; `store` uses
//! `compute` for its record type only; `compute` uses none of them.
//!
//! Evaluations depend on `scoring::store` (they create, cancel and check their scoring jobs
//! there), never the other way round but for one call: a scoring job that belongs to an
//! evaluation tells it what happened to it through `on_scoring_job_outcome` (below), which
//! `scoring::store::report` calls in the transaction that changed the scoring job.
mod compute;
mod gate;
mod job;
mod store;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use super::store::ScoringJobOutcome;
use super::ScoringError;
use crate::registry::VersionMeta;

pub use gate::{ensure_gate_evaluation, GateSettings, PromotionGate, GATE_METRIC};
pub use job::{handle_evaluate, EvaluateJob};
pub use store::{
    cancel, create, disagreements, evaluate_job_cancelled, evaluate_job_retrying, get, list,
    scoring_jobs,
};

crate::db::text_enum! {
    /// An evaluation's state (`evaluations.status`): `scoring` while its versions' scoring jobs
    /// run, `evaluating` while its `evaluate` job runs, then `done`; or `failed` / `cancelled`.
    pub enum EvaluationStatus {
        Scoring = "scoring",
        Evaluating = "evaluating",
        Done = "done",
        Failed = "failed",
        Cancelled = "cancelled",
    }
}

/// An evaluation as stored.
#[derive(Debug, Clone)]
pub struct EvaluationRow {
    pub id: Uuid,
    pub model_name: String,
    pub versions: Vec<i32>,
    pub dataset_id: Uuid,
    pub split: String,
    pub status: EvaluationStatus,
    pub run_id: Option<Uuid>,
    pub promotion: Option<serde_json::Value>,
    pub results: Option<serde_json::Value>,
    pub disagreements: Option<i32>,
    pub evaluate_job_id: Option<String>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A disagreement as stored: the record, its consensus labels, each version's decision.
#[derive(Debug, Clone, Serialize)]
pub struct Disagreement {
    pub position: i32,
    pub document_id: i64,
    pub source: String,
    pub external_id: String,
    pub text: String,
    pub labels: serde_json::Value,
    pub predictions: serde_json::Value,
}

/// What a new evaluation compares, checked by the caller (versions exist, dataset ready).
pub struct NewEvaluation<'a> {
    pub model_name: &'a str,
    pub versions: &'a [(i32, VersionMeta)],
    pub dataset_id: Uuid,
    pub split: &'a str,
    /// The training run whose gated `auto_promote` asks for it (one evaluation per run).
    pub run_id: Option<Uuid>,
    pub promotion: Option<PromotionGate>,
}

/// The hook through which a scoring job of the evaluation tells what happened to it, in the
/// transaction that changed it (`scoring::store::report` is its one caller):
///
/// - succeeded: once every scoring job of the evaluation is done, the evaluation moves to
///   `evaluating` and its `evaluate` job is enqueued (once);
/// - failed for good: the evaluation fails with the same message, unless it has ended;
/// - cancelled: the evaluation is cancelled whole, with every scoring job of it (this one
///   included) and its `evaluate` job;
/// - retrying: a failed evaluation is scoring again.
///
/// Returns whether anything changed.
pub(super) async fn on_scoring_job_outcome(
    conn: &mut PgConnection,
    evaluation_id: Uuid,
    outcome: ScoringJobOutcome<'_>,
) -> Result<bool, ScoringError> {
    match outcome {
        ScoringJobOutcome::Succeeded { max_attempts } => {
            store::start_if_scored(conn, evaluation_id, max_attempts).await
        }
        ScoringJobOutcome::Failed { error } => {
            store::scoring_failed(conn, evaluation_id, error).await
        }
        ScoringJobOutcome::Cancelled => store::cancel_in(conn, evaluation_id).await,
        ScoringJobOutcome::Retrying => store::scoring_again(conn, evaluation_id).await,
    }
}
