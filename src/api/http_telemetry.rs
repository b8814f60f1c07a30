//! Every HTTP request's span (continuing a caller's W3C trace context), its duration metric by
//! route template and status, and the Prometheus `/metrics` endpoint.
use std::collections::HashMap;
use std::time::Instant;

use poem::http::StatusCode;
use poem::{Endpoint, IntoResponse, Request, Response};
use tracing::Instrument;

use crate::telemetry;

/// Wraps one request: a span named `METHOD /route/{template}`, the duration histogram
/// `http.server.request.duration` (seconds) by method, route template and status.
pub async fn around<E: Endpoint>(ep: std::sync::Arc<E>, req: Request) -> poem::Result<Response> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let span = tracing::info_span!(
        "http_request",
        otel.name = %format!("{method} {path}"),
        otel.kind = "server",
        http.request.method = %method,
        url.path = %path,
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        auth.token = tracing::field::Empty,
    );
    if req.headers().contains_key("traceparent") {
        let carried: HashMap<String, String> = ["traceparent", "tracestate"]
            .iter()
            .filter_map(|k| {
                let value = req.headers().get(*k)?.to_str().ok()?;
                Some((k.to_string(), value.to_string()))
            })
            .collect();
        telemetry::propagation::set_parent_from_map(&span, &carried);
    }
    let started = Instant::now();
    let result = ep
        .call(req)
        .instrument(span.clone())
        .await
        .map(IntoResponse::into_response);
    let (status, route): (StatusCode, Option<String>) = match &result {
        Ok(response) => (
            response.status(),
            response
                .data::<poem::PathPattern>()
                .map(|p| p.0.to_string()),
        ),
        Err(e) => (
            e.status(),
            e.data::<poem::PathPattern>().map(|p| p.0.to_string()),
        ),
    };
    let response = result;
    span.record("http.response.status_code", status.as_u16());
    let template = route.as_deref().map(openapi_template);
    if let Some(template) = &template {
        span.record("http.route", template.as_str());
        telemetry::propagation::rename_span(&span, format!("{method} {template}"));
    }
    let attrs = telemetry::instruments::http_request(&method, status.as_u16(), template.as_deref());
    telemetry::metrics()
        .http_duration
        .record(started.elapsed().as_secs_f64(), &attrs);
    response
}

/// A route's shape with its parameter names blanked: `/api/v1/datasets/{}`.
fn shape(template: &str) -> String {
    template
        .split('/')
        .map(|segment| {
            if segment.starts_with(':') || (segment.starts_with('{') && segment.ends_with('}')) {
                "{}"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// poem's matched pattern (poem-openapi names parameters `:param0`) as the OpenAPI document
/// spells the route: `/api/v1/datasets/{id}`.
fn openapi_template(pattern: &str) -> String {
    match super::routes::documented_template(pattern) {
        Some(template) => template.to_string(),
        None => shape(pattern).replace("{}", "{param}"),
    }
}

/// `GET /metrics`: the Prometheus text exposition of this process.
#[poem::handler]
pub fn metrics_endpoint() -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(telemetry::render_prometheus())
}

/// A small listener that serves only `/metrics` (for worker processes).
pub async fn serve_metrics_only(listen: String) -> anyhow::Result<()> {
    let app = poem::Route::new().at("/metrics", poem::get(metrics_endpoint));
    tracing::info!("metrics on http://{listen}/metrics");
    poem::Server::new(poem::listener::TcpListener::bind(listen))
        .run(app)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn poem_patterns_read_as_openapi_templates() {
        assert_eq!(
            super::openapi_template("/api/v1/datasets/:param0/records"),
            "/api/v1/datasets/{id}/records"
        );
        assert_eq!(super::openapi_template("/predict"), "/predict");
    }
}
