//! Every metric trainyard records, as OpenTelemetry instruments (one place lists them all).
//!
//! Names follow the OpenTelemetry semantic conventions where one exists
//! (`http.server.request.duration`) and `trainyard.*` otherwise; the Prometheus exporter turns
//! them into Prometheus names (`http_server_request_duration_seconds`,
//! `trainyard_jobs_finished_total`). Attribute keys become labels the same way
//! (`job.kind` → `job_kind`).
use std::sync::OnceLock;

use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter};
use opentelemetry::KeyValue;

/// Seconds, for request and job durations: 1 ms to 2 minutes.
const SECONDS_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Texts per inference batch.
const BATCH_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

pub struct Instruments {
    pub http_duration: Histogram<f64>,
    pub jobs_enqueued: Counter<u64>,
    pub jobs_started: Counter<u64>,
    pub jobs_finished: Counter<u64>,
    pub job_duration: Histogram<f64>,
    pub embeddings_computed: Counter<u64>,
    pub embeddings_reused: Counter<u64>,
    pub documents_scored: Counter<u64>,
    pub embedding_tokens: Counter<u64>,
    pub embedding_provider_errors: Counter<u64>,
    pub training_loss: Gauge<f64>,
    pub training_validation_f1: Gauge<f64>,
    pub training_samples_per_second: Gauge<f64>,
    pub training_steps: Counter<u64>,
    pub inference_batch_size: Histogram<f64>,
    pub inference_duration: Histogram<f64>,
    pub served_version: Gauge<i64>,
    pub model_load_failures: Counter<u64>,
    pub model_reloads: Counter<u64>,
}

impl Instruments {
    fn new(meter: &Meter) -> Instruments {
        Instruments {
            http_duration: meter
                .f64_histogram("http.server.request.duration")
                .with_unit("s")
                .with_description("Duration of HTTP server requests, by route template and status.")
                .with_boundaries(SECONDS_BUCKETS.to_vec())
                .build(),
            jobs_enqueued: meter
                .u64_counter("trainyard.jobs.enqueued")
                .with_description("Jobs enqueued, by kind.")
                .build(),
            jobs_started: meter
                .u64_counter("trainyard.jobs.started")
                .with_description("Job attempts started, by kind.")
                .build(),
            jobs_finished: meter
                .u64_counter("trainyard.jobs.finished")
                .with_description("Job attempts finished, by kind and outcome (succeeded, failed, retried, cancelled).")
                .build(),
            job_duration: meter
                .f64_histogram("trainyard.job.duration")
                .with_unit("s")
                .with_description("Duration of job attempts, by kind and outcome.")
                .with_boundaries(SECONDS_BUCKETS.to_vec())
                .build(),
            embeddings_computed: meter
                .u64_counter("trainyard.embeddings.computed")
                .with_description("Texts embedded by a provider, by model.")
                .build(),
            documents_scored: meter
                .u64_counter("trainyard.documents.scored")
                .with_description("Documents scored by batch scoring jobs, by model.")
                .build(),
            embeddings_reused: meter
                .u64_counter("trainyard.embeddings.reused")
                .with_description("Texts whose embedding was already stored, by model.")
                .build(),
            embedding_tokens: meter
                .u64_counter("trainyard.embedding.tokens")
                .with_description("Tokens embedded, by model (rate = tokens/s).")
                .build(),
            embedding_provider_errors: meter
                .u64_counter("trainyard.embedding.provider.errors")
                .with_description("Failed embedding provider calls, by model and error type.")
                .build(),
            training_loss: meter
                .f64_gauge("trainyard.training.loss")
                .with_description("Loss of the latest epoch, by run, model and split (train, validation).")
                .build(),
            training_validation_f1: meter
                .f64_gauge("trainyard.training.validation.f1")
                .with_description("Validation macro-F1 of the latest epoch, by run and model.")
                .build(),
            training_samples_per_second: meter
                .f64_gauge("trainyard.training.samples_per_second")
                .with_description("Training throughput of the latest epoch, by run and model.")
                .build(),
            training_steps: meter
                .u64_counter("trainyard.training.steps")
                .with_description("Optimizer steps taken, by model.")
                .build(),
            inference_batch_size: meter
                .f64_histogram("trainyard.inference.batch.size")
                .with_description("Texts per forward pass of a served model, by model.")
                .with_boundaries(BATCH_BUCKETS.to_vec())
                .build(),
            inference_duration: meter
                .f64_histogram("trainyard.inference.duration")
                .with_unit("s")
                .with_description("Duration of one forward pass of a served model, by model.")
                .with_boundaries(SECONDS_BUCKETS.to_vec())
                .build(),
            served_version: meter
                .i64_gauge("trainyard.model.served_version")
                .with_description("The version each served model answers with, by model.")
                .build(),
            model_load_failures: meter
                .u64_counter("trainyard.model.load_failures")
                .with_description("Promoted versions that failed to load (the old one kept serving), by model.")
                .build(),
            model_reloads: meter
                .u64_counter("trainyard.model.reloads")
                .with_description("Hot swaps to a newly promoted version, by model.")
                .build(),
        }
    }
}

static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();

/// The process's instruments, on the global meter provider (a no-op one until
/// `telemetry::init` has run, as in unit tests).
pub fn metrics() -> &'static Instruments {
    INSTRUMENTS.get_or_init(|| Instruments::new(&opentelemetry::global::meter("trainyard")))
}

/// `job.kind` attribute.
pub fn kind(kind: &str) -> KeyValue {
    KeyValue::new("job.kind", kind.to_string())
}

/// `model` attribute.
pub fn model(name: &str) -> KeyValue {
    KeyValue::new("model", name.to_string())
}
