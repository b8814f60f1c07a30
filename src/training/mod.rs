//! Training runs: the `train` job, its metrics, curves and telemetry webhook.
//!
//! A failure is a [`TrainingError`], which says whether a job should try again.
pub mod curves;
mod epochs;
pub mod error;
pub mod metrics;
pub mod run;
mod run_data;
pub mod runs;
pub mod webhook;

pub use error::TrainingError;
