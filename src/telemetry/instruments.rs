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

/// `outcome` attribute of a finished job: succeeded, failed, retried, cancelled, interrupted.
pub fn outcome(outcome: &'static str) -> KeyValue {
    KeyValue::new("outcome", outcome)
}

/// `error.type` attribute of a provider error.
pub fn error_type(kind: &'static str) -> KeyValue {
    KeyValue::new("error.type", kind)
}

/// `run.id` attribute of a training run.
pub fn run(id: impl std::fmt::Display) -> KeyValue {
    KeyValue::new("run.id", id.to_string())
}

/// `split` attribute: train, validation or test.
pub fn split(name: &'static str) -> KeyValue {
    KeyValue::new("split", name)
}

/// The attributes of an HTTP request's duration: method, status and, when the request matched
/// a route, its template (`/api/v1/datasets/{id}`).
pub fn http_request(method: &str, status: u16, route: Option<&str>) -> Vec<KeyValue> {
    let mut attrs = vec![
        KeyValue::new("http.request.method", method.to_string()),
        KeyValue::new("http.response.status_code", i64::from(status)),
    ];
    if let Some(route) = route {
        attrs.push(KeyValue::new("http.route", route.to_string()));
    }
    attrs
}

/// One queue's figures for the queue-wide gauges.
#[derive(Debug, Clone, Default)]
pub struct QueueFigures {
    pub queue: String,
    pub waiting: f64,
    pub running: f64,
    pub oldest_waiting_secs: f64,
    pub live_workers: f64,
}

/// The queue-wide gauges (`trainyard.queue.depth`, `.running`, `.oldest_waiting_age`,
/// `trainyard.workers.live`, attribute `queue`), observed on the global meter: at each
/// collection `figures` says what to report (nothing when this process is not the sampler).
pub fn register_queue_gauges(
    figures: impl Fn() -> Vec<QueueFigures> + Clone + Send + Sync + 'static,
) {
    queue_gauges_on(&opentelemetry::global::meter("trainyard"), figures);
}

fn queue_gauges_on(
    meter: &Meter,
    figures: impl Fn() -> Vec<QueueFigures> + Clone + Send + Sync + 'static,
) {
    let gauge = |name: &'static str,
                 description: &'static str,
                 unit: Option<&'static str>,
                 pick: fn(&QueueFigures) -> f64| {
        let figures = figures.clone();
        let mut builder = meter
            .f64_observable_gauge(name)
            .with_description(description)
            .with_callback(move |observer| {
                for q in figures() {
                    observer.observe(pick(&q), &[KeyValue::new("queue", q.queue.clone())]);
                }
            });
        if let Some(unit) = unit {
            builder = builder.with_unit(unit);
        }
        let _ = builder.build();
    };
    gauge(
        "trainyard.queue.depth",
        "Jobs waiting in the queue (pending, or failed with attempts left).",
        None,
        |q| q.waiting,
    );
    gauge(
        "trainyard.queue.running",
        "Jobs of the queue running now.",
        None,
        |q| q.running,
    );
    gauge(
        "trainyard.queue.oldest_waiting_age",
        "Age of the oldest job that could run now but waits.",
        Some("s"),
        |q| q.oldest_waiting_secs,
    );
    gauge(
        "trainyard.workers.live",
        "Workers of the queue seen within the orphan window.",
        None,
        |q| q.live_workers,
    );
}

/// The Prometheus names of every metric family trainyard exports (`/metrics` of `serve` and
/// of workers), found by recording each instrument once on a private meter with the exporter
/// `/metrics` uses: what dashboards and alerts may use.
pub fn exported_families() -> std::collections::BTreeSet<String> {
    let registry = prometheus::Registry::new();
    let reader = super::prometheus_reader(&registry).expect("a Prometheus reader");
    let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_reader(reader)
        .build();
    let meter = opentelemetry::metrics::MeterProvider::meter(&provider, "trainyard");
    // Destructured whole: an instrument added to `Instruments` and not recorded here does not
    // compile.
    let Instruments {
        http_duration,
        jobs_enqueued,
        jobs_started,
        jobs_finished,
        job_duration,
        embeddings_computed,
        embeddings_reused,
        documents_scored,
        embedding_tokens,
        embedding_provider_errors,
        training_loss,
        training_validation_f1,
        training_samples_per_second,
        training_steps,
        inference_batch_size,
        inference_duration,
        served_version,
        model_load_failures,
        model_reloads,
    } = Instruments::new(&meter);
    let a = [kind("train")];
    http_duration.record(0.1, &http_request("GET", 200, Some("/health")));
    for counter in [
        &jobs_enqueued,
        &jobs_started,
        &jobs_finished,
        &embeddings_computed,
        &embeddings_reused,
        &documents_scored,
        &embedding_tokens,
        &embedding_provider_errors,
        &training_steps,
        &model_load_failures,
        &model_reloads,
    ] {
        counter.add(1, &a);
    }
    for histogram in [&job_duration, &inference_batch_size, &inference_duration] {
        histogram.record(1.0, &a);
    }
    for gauge in [
        &training_loss,
        &training_validation_f1,
        &training_samples_per_second,
    ] {
        gauge.record(1.0, &a);
    }
    served_version.record(1, &a);
    queue_gauges_on(&meter, || {
        vec![QueueFigures {
            queue: "train".into(),
            ..QueueFigures::default()
        }]
    });
    let names = registry
        .gather()
        .iter()
        .map(|f| f.name().to_string())
        .collect();
    let _ = provider.shutdown();
    names
}
