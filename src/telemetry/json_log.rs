//! JSON log lines: time, level, target, message and fields, the fields of every enclosing span
//! (so a line about a job carries `job.id` and `job.kind`), and the OpenTelemetry trace and
//! span ids when traces are exported.
use std::fmt;

use opentelemetry::trace::TraceContextExt;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

pub struct JsonWithTraceIds;

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::from(format!("{value:?}")));
    }
}

/// Parses the `key=value key2="v"` text that the default field formatter stored for a span.
fn span_fields(text: &str, into: &mut Map<String, Value>) {
    let mut rest = text.trim();
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().to_string();
        let after = &rest[eq + 1..];
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            (
                quoted[..end].to_string(),
                quoted.get(end + 1..).unwrap_or(""),
            )
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_string(), &after[end..])
        };
        if !key.starts_with("otel.") {
            into.entry(key).or_insert(Value::from(value));
        }
        rest = next.trim_start();
    }
}

impl<S, N> FormatEvent<S, N> for JsonWithTraceIds
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            Value::from(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        );
        line.insert("level".into(), Value::from(meta.level().as_str()));
        line.insert("target".into(), Value::from(meta.target()));
        let mut fields = Map::new();
        event.record(&mut JsonVisitor(&mut fields));
        if let Some(message) = fields.remove("message") {
            line.insert("message".into(), message);
        }
        // Inner spans first, so the nearest span's value wins.
        let mut from_spans = Map::new();
        if let Some(scope) = ctx.event_scope() {
            let mut names = Vec::new();
            for span in scope {
                names.push(span.name());
                if let Some(text) = span.extensions().get::<FormattedFields<N>>() {
                    span_fields(text.as_str(), &mut from_spans);
                }
            }
            if let Some(name) = names.first() {
                line.insert("span".into(), Value::from(*name));
            }
        }
        for (k, v) in from_spans {
            fields.entry(k).or_insert(v);
        }
        if super::traces_enabled() {
            let context = tracing::Span::current().context();
            let span = context.span();
            let span_context = span.span_context();
            if span_context.is_valid() {
                line.insert(
                    "trace_id".into(),
                    Value::from(span_context.trace_id().to_string()),
                );
                line.insert(
                    "span_id".into(),
                    Value::from(span_context.span_id().to_string()),
                );
            }
        }
        if !fields.is_empty() {
            line.insert("fields".into(), Value::Object(fields));
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_field_text_is_parsed_back() {
        let mut m = Map::new();
        span_fields(r#"job.id=01ABC job.kind="embed" n=3"#, &mut m);
        assert_eq!(m["job.id"], "01ABC");
        assert_eq!(m["job.kind"], "embed");
        assert_eq!(m["n"], "3");
    }
}
