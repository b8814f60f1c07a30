//! Training runs: the `train` job, its metrics, curves and telemetry webhook.
pub mod curves;
mod epochs;
pub mod metrics;
pub mod run;
mod run_data;
pub mod runs;
pub mod webhook;
