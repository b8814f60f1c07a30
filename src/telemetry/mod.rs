//! Only this module knows OpenTelemetry: logs (text or JSON), traces exported over OTLP (gRPC
//! or HTTP, configured by the standard `OTEL_*` variables), metrics for Prometheus's
//! `/metrics` and, when configured, OTLP metrics; W3C trace context carried in job metadata.
//!
//! Off unless configured: with no `OTEL_EXPORTER_OTLP_*ENDPOINT` (and no
//! `telemetry.otlp_endpoint`) no exporter, no OpenTelemetry tracing layer and no background
//! thread exist; spans are then plain `tracing` spans that only the log layer sees.
pub mod instruments;
mod json_log;
pub mod propagation;

use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use instruments::metrics;

/// How log lines are written to stderr.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines (the default at a terminal).
    #[default]
    Text,
    /// One JSON object per line, with trace and span ids.
    Json,
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

fn env_is(name: &str, value: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v.trim().eq_ignore_ascii_case(value))
}

/// Whether traces go out over OTLP: an endpoint is configured and nothing turned them off.
pub fn traces_enabled() -> bool {
    !env_is("OTEL_SDK_DISABLED", "true")
        && !env_is("OTEL_TRACES_EXPORTER", "none")
        && (env_set("OTEL_EXPORTER_OTLP_ENDPOINT") || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Whether metrics also go out over OTLP (Prometheus's `/metrics` is always there).
pub fn otlp_metrics_enabled() -> bool {
    !env_is("OTEL_SDK_DISABLED", "true")
        && !env_is("OTEL_METRICS_EXPORTER", "none")
        && (env_set("OTEL_EXPORTER_OTLP_ENDPOINT")
            || env_set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"))
}

fn resource() -> Resource {
    // Reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; trainyard is the default name.
    let mut builder = Resource::builder();
    if !env_set("OTEL_SERVICE_NAME")
        && !std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="))
    {
        builder = builder.with_service_name("trainyard");
    }
    builder.build()
}

struct MetricsPipeline {
    registry: prometheus::Registry,
    _provider: SdkMeterProvider,
}

static METRICS: OnceLock<MetricsPipeline> = OnceLock::new();
static TRACES: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The Prometheus registry behind `/metrics`. The first call installs the global meter
/// provider: a Prometheus reader always, plus a periodic OTLP exporter when configured (build
/// it inside the Tokio runtime: the gRPC client needs one).
pub fn prometheus_registry() -> &'static prometheus::Registry {
    &METRICS
        .get_or_init(|| {
            let registry = prometheus::Registry::new();
            let mut builder = SdkMeterProvider::builder().with_resource(resource());
            match prometheus_reader(&registry) {
                Ok(reader) => builder = builder.with_reader(reader),
                Err(e) => eprintln!("metrics: the Prometheus exporter could not start: {e}"),
            }
            if otlp_metrics_enabled() {
                match opentelemetry_otlp::MetricExporter::builder().build() {
                    Ok(exporter) => builder = builder.with_periodic_exporter(exporter),
                    Err(e) => eprintln!("metrics: the OTLP exporter could not start: {e}"),
                }
            }
            let provider = builder.build();
            opentelemetry::global::set_meter_provider(provider.clone());
            MetricsPipeline {
                registry,
                _provider: provider,
            }
        })
        .registry
}

/// The reader that turns the instruments into `registry`'s Prometheus families (the one
/// configuration of names: `/metrics` and [`instruments::exported_families`] both use it).
pub(crate) fn prometheus_reader(
    registry: &prometheus::Registry,
) -> Result<opentelemetry_prometheus::PrometheusExporter, opentelemetry_sdk::error::OTelSdkError> {
    opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .scope_info_enabled(false)
        .build()
}

/// The Prometheus text exposition of every metric of this process.
pub fn render_prometheus() -> String {
    use prometheus::Encoder;
    let families = prometheus_registry().gather();
    let mut out = Vec::new();
    if let Err(e) = prometheus::TextEncoder::new().encode(&families, &mut out) {
        tracing::warn!("encoding metrics failed: {e}");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Installs logging (RUST_LOG, default info; text or JSON on stderr), tracing export when
/// configured, and the metrics pipeline. Call once, early, inside the Tokio runtime.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,sqlx=warn,apalis=warn,apalis_postgres=warn,apalis_core=warn,opentelemetry=warn,opentelemetry_sdk=warn,h2=warn,tonic=warn")
    });
    // Filters are per layer: RUST_LOG quiets the log lines without starving the exported
    // traces, whose spans are at info level.
    let fmt_layer = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .event_format(json_log::JsonWithTraceIds)
            .with_filter(filter)
            .boxed(),
    };
    let otel_layer = traces_enabled().then(|| {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let provider = match opentelemetry_otlp::SpanExporter::builder().build() {
            Ok(exporter) => SdkTracerProvider::builder()
                .with_resource(resource())
                .with_batch_exporter(exporter)
                .build(),
            Err(e) => {
                eprintln!("traces: the OTLP exporter could not start: {e}");
                SdkTracerProvider::builder().build()
            }
        };
        let tracer = provider.tracer("trainyard");
        let _ = TRACES.set(provider);
        // trainyard's own spans; never the exporter's own HTTP/gRPC calls (they would
        // trace themselves).
        let spans = EnvFilter::try_from_env("TRAINYARD_TRACE_FILTER")
            .unwrap_or_else(|_| EnvFilter::new("trainyard=info,off"));
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(spans)
    });
    let _ = tracing_subscriber::registry()
        .with(fmt_layer)
        .with(otel_layer)
        .try_init();
    prometheus_registry();
}

/// Sends what is buffered (spans, metrics) before the process exits.
pub fn shutdown() {
    if let Some(provider) = TRACES.get() {
        let _ = provider.force_flush();
        let _ = provider.shutdown();
    }
    if let Some(pipeline) = METRICS.get() {
        let _ = pipeline._provider.force_flush();
    }
}
