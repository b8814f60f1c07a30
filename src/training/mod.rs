//! Training runs: the `train` job, its metrics, curves and telemetry webhook.
pub mod curves;
pub mod metrics;
pub mod run;
pub mod webhook;
