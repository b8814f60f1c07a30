//! W3C trace context (`traceparent`, `tracestate`) in and out of string maps: the headers
//! of a request arriving at the API (read by `api/`), and the metadata stored with every job, so that one trace runs from a
//! request through the job it enqueued to the worker that ran it and the jobs that fanned out.
use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector};
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct MapInjector<'a>(&'a mut HashMap<String, String>);

impl Injector for MapInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

struct MapExtractor<'a>(&'a HashMap<String, String>);

impl Extractor for MapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The current span's context as `traceparent`/`tracestate` entries; empty when traces are
/// not exported (nothing to follow).
pub fn current_context_map() -> HashMap<String, String> {
    let mut map = HashMap::new();
    if super::traces_enabled() {
        let context = tracing::Span::current().context();
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&context, &mut MapInjector(&mut map))
        });
    }
    map
}

/// Makes `span` a child of the context carried in `map` (when there is one).
pub fn set_parent_from_map(span: &tracing::Span, map: &HashMap<String, String>) {
    if !super::traces_enabled() || !map.contains_key("traceparent") {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&MapExtractor(map)));
    let _ = span.set_parent(parent);
}

/// Renames an exported span once its final name is known (an HTTP request's route template
/// is known only after routing); the OpenTelemetry layer ignores `otel.name` recorded late.
pub fn rename_span(span: &tracing::Span, name: String) {
    if super::traces_enabled() {
        use opentelemetry::trace::TraceContextExt;
        span.context().span().update_name(name);
    }
}
