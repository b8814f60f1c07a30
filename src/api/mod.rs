//! Only this module knows HTTP: the poem-openapi service, Swagger UI, and the error mapping.
pub mod auth;
pub mod datasets;
pub mod documents;
pub mod errors;
pub mod evaluations;
pub mod health;
pub mod http_telemetry;
pub mod jobs;
pub mod labelling;
pub mod legacy_v1;
pub mod limits;
pub mod models;
pub mod openai_embeddings;
mod payload_errors;
pub mod predict;
pub mod review;
mod route_errors;
mod routes;
pub mod scoring;
pub mod tokens;
pub mod training;
mod training_schema;
pub mod ui;
mod wire_types;

use std::sync::Arc;

use poem::http::{header, StatusCode};
use poem::web::headers::{ContentLength, HeaderMapExt};
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response, Route};
use poem_openapi::OpenApiService;
use sqlx::PgPool;

use crate::config::Settings;
use crate::embedding::Embedders;
use crate::inference::ModelServer;
use errors::ApiError;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub settings: Arc<Settings>,
    pub embedders: Embedders,
    pub models: Arc<ModelServer>,
    /// Tokens, scopes and rate limits of this process.
    pub gate: Arc<auth::Gate>,
    /// The health endpoints' short check of the database.
    pub database: Arc<crate::db::DatabaseProbe>,
    /// Permits for expensive requests (`server.max_concurrent_heavy_requests`).
    pub heavy: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    /// A permit for an expensive request, held until its answer has been sent (see
    /// [`held`]); 503 `busy` with `Retry-After` when all are taken.
    pub fn heavy_permit(&self, what: &str) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.heavy
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::busy(what, 2))
    }
}

impl AppState {
    /// The state of one API process; starts loading promoted models in the background.
    pub fn new(pool: PgPool, settings: Arc<Settings>) -> AppState {
        let models = ModelServer::new(pool.clone(), settings.clone());
        models.start();
        AppState {
            gate: Arc::new(auth::Gate::new(pool.clone(), &settings)),
            database: Arc::new(crate::db::DatabaseProbe::new(
                pool.clone(),
                health::DATABASE_PROBE_TIMEOUT,
                health::DATABASE_PROBE_FRESH_FOR,
            )),
            embedders: Embedders::new(settings.clone()),
            heavy: Arc::new(tokio::sync::Semaphore::new(
                settings.server.max_concurrent_heavy_requests.max(1),
            )),
            pool,
            settings,
            models,
        }
    }
}

/// Items per second since `started` and seconds left at that rate: absent until something is
/// done and half a second has passed (a rate over less means nothing).
pub fn rate_and_eta(
    done: i64,
    total: i64,
    started: Option<chrono::DateTime<chrono::Utc>>,
) -> Option<(f64, f64)> {
    let elapsed = (chrono::Utc::now() - started?).num_milliseconds() as f64 / 1000.0;
    if elapsed <= 0.5 || done <= 0 {
        return None;
    }
    let rate = done as f64 / elapsed;
    Some((rate, (total - done).max(0) as f64 / rate))
}

/// Validated (limit, offset); limit defaults to 50.
pub fn page_bounds(
    state: &AppState,
    limit: Option<i64>,
    offset: Option<i64>,
) -> Result<(i64, i64), ApiError> {
    let max = state.settings.server.page_size_max;
    let limit = limit.unwrap_or(50);
    if !(1..=max).contains(&limit) {
        return Err(ApiError::bad_request(
            format!("limit must be between 1 and {max}"),
            Some("limit"),
        ));
    }
    let offset = offset.unwrap_or(0);
    if offset < 0 {
        return Err(ApiError::bad_request("offset must be >= 0", Some("offset")));
    }
    Ok((limit, offset))
}

type Apis = (
    health::HealthApi,
    jobs::JobsApi,
    documents::DocumentsApi,
    datasets::DatasetsApi,
    training::TrainingApi,
    models::ModelsApi,
    predict::PredictApi,
    openai_embeddings::OpenAiEmbeddingsApi,
    legacy_v1::LegacyV1Api,
    tokens::TokensApi,
    scoring::ScoringApi,
    evaluations::EvaluationsApi,
    review::ReviewApi,
    labelling::LabellingApi,
);

pub fn openapi_service(server_url: &str) -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (
            health::HealthApi,
            jobs::JobsApi,
            documents::DocumentsApi,
            datasets::DatasetsApi,
            training::TrainingApi,
            models::ModelsApi,
            predict::PredictApi,
            openai_embeddings::OpenAiEmbeddingsApi,
            legacy_v1::LegacyV1Api,
            tokens::TokensApi,
            scoring::ScoringApi,
            evaluations::EvaluationsApi,
            review::ReviewApi,
            labelling::LabellingApi,
        ),
        "trainyard",
        env!("CARGO_PKG_VERSION"),
    )
    .description(format!("Labelled text in, served classifiers out: documents, annotations, datasets, embeddings, training runs, a model registry, inference and jobs.\n\n{}", limits::describe()))
    .server(server_url)
}

/// The generated document with the security this process enforces declared on it.
pub fn document(server_url: &str, policy: auth::Policy) -> String {
    let mut doc: serde_json::Value =
        serde_json::from_str(&openapi_service(server_url).spec()).expect("poem-openapi emits JSON");
    auth::declare_security(&mut doc, policy);
    // poem-openapi keeps one content type per status; the exports answer 200 in two.
    for export in ["datasets", "scoring-jobs"] {
        let pointer =
            format!("/paths/~1api~1v1~1{export}~1{{id}}~1export/get/responses/200/content");
        if let Some(content) = doc.pointer_mut(&pointer) {
            content["application/x-ndjson"] = serde_json::json!({"schema": {"type": "string"}});
        }
    }
    serde_json::to_string_pretty(&doc).expect("a JSON value serializes")
}

/// The OpenAPI document as committed under `openapi/` (stable server URL; tokens required,
/// inference by token: what a non-loopback `serve` enforces by default).
pub fn openapi_json() -> String {
    document("http://127.0.0.1:8322", auth::Policy::documented())
}

/// Serves the API on `listen` until `shutdown` resolves, then lets requests in flight finish
/// (at most 10 s).
pub async fn serve(
    listen: &str,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> std::io::Result<()> {
    poem::Server::new(poem::listener::TcpListener::bind(listen.to_string()))
        .run_with_graceful_shutdown(
            app(state),
            shutdown,
            Some(std::time::Duration::from_secs(10)),
        )
        .await
}

pub fn app(state: AppState) -> impl Endpoint {
    let api = openapi_service("/");
    // Swagger UI and /openapi.json show the document this process enforces.
    let served = document("/", state.gate.policy);
    let ui_html = api.swagger_ui_html().replacen(&api.spec(), &served, 1);
    let docs = Route::new().at(
        "/",
        poem::endpoint::make_sync(move |_| poem::web::Html(ui_html.clone())),
    );
    let spec = poem::endpoint::make_sync(move |_| {
        Response::builder()
            .content_type("application/json; charset=utf-8")
            .body(served.clone())
    });
    let limit = state.settings.server.max_body_bytes;
    let gate = state.gate.clone();
    let cors = auth::cors(&state.settings);
    Route::new()
        .nest("/", api)
        .nest("/docs", docs)
        .nest("/ui", ui::routes())
        .at("/openapi.json", poem::get(spec))
        .at("/metrics", poem::get(http_telemetry::metrics_endpoint))
        .data(state)
        .around(move |ep, req| guard_body(ep, req, limit))
        .around(route_errors::around)
        .around(move |ep, req| auth::around(ep, req, gate.clone()))
        .with_if(cors.is_some(), cors.unwrap_or_default())
        .around(http_telemetry::around)
        .catch_all_error(errors::poem_error_to_json)
        .around(security_headers)
}

/// A body stream that holds `permit` until it is done (or dropped with the connection).
pub fn held<S: futures::Stream + Send + 'static>(
    stream: S,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> impl futures::Stream<Item = S::Item> + Send + 'static {
    use futures::StreamExt;
    stream.map(move |item| {
        let _held = &permit;
        item
    })
}

/// Swagger UI's page may run only its own inline script and style, talk only to this origin,
/// and not be framed.
pub const DOCS_CSP: &str = "default-src 'none'; script-src 'self' 'unsafe-inline'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; \
     connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// `nosniff` on every answer; on `/docs`, a content security policy and no framing.
async fn security_headers<E: Endpoint>(
    ep: std::sync::Arc<E>,
    req: Request,
) -> poem::Result<Response> {
    let docs = req.uri().path() == "/docs" || req.uri().path().starts_with("/docs/");
    let web_app = ui::is_ui_path(req.uri().path());
    let mut response = ep.call(req).await?.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    if docs || web_app {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            header::HeaderValue::from_static(if docs { DOCS_CSP } else { ui::UI_CSP }),
        );
        headers.insert(
            header::X_FRAME_OPTIONS,
            header::HeaderValue::from_static("DENY"),
        );
        headers.insert(
            header::REFERRER_POLICY,
            header::HeaderValue::from_static("no-referrer"),
        );
    }
    Ok(response)
}

/// Rejects bodies over `limit` bytes with 413: by Content-Length when given, else by reading
/// the body (chunked, HTTP/2 or undeclared) up to the limit. A declared empty body passes. A JSON body is kept
/// so that, when poem-openapi refuses it, the 400 can name the field at fault
/// (`payload_errors`).
async fn guard_body<E: Endpoint>(
    ep: std::sync::Arc<E>,
    mut req: Request,
    limit: usize,
) -> poem::Result<Response> {
    let too_large = || {
        poem::Error::from_string(
            format!("request body is larger than {limit} bytes"),
            StatusCode::PAYLOAD_TOO_LARGE,
        )
    };
    let length = req.headers().typed_get::<ContentLength>();
    if length.as_ref().is_some_and(|l| l.0 as usize > limit) {
        return Err(too_large());
    }
    // Only a declared empty body is skipped: HTTP/2 (h2c included) sends no Content-Length
    // nor Transfer-Encoding, so every other body is read through the limit.
    let has_body = length.is_none_or(|l| l.0 > 0);
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let mut kept = None;
    if has_body && (json || length.is_none()) {
        let body = req
            .take_body()
            .into_bytes_limit(limit)
            .await
            .map_err(|_| too_large())?;
        if json {
            kept = Some(body.clone());
        }
        req.set_body(body);
    }
    if let Some(body) = &kept {
        if let Some(refusal) =
            payload_errors::check_request(req.method().as_str(), req.uri().path(), body)
        {
            return Ok(payload_errors::refusal_response(refusal));
        }
    }
    match ep.call(req).await {
        Ok(response) => Ok(response.into_response()),
        Err(e) => {
            let explained = e
                .downcast_ref::<poem_openapi::error::ParseRequestPayloadError>()
                .zip(kept)
                .and_then(|(parse, body)| payload_errors::explain(&parse.reason, &body));
            match explained {
                Some((path, problem)) if path.is_empty() => Ok(ApiError::bad_request(
                    format!("invalid request body: {problem}"),
                    None,
                )
                .into_response()),
                Some((path, problem)) => Ok(ApiError::bad_request(
                    format!("invalid request body: `{path}` {problem}"),
                    Some(&path),
                )
                .into_response()),
                None => Err(e),
            }
        }
    }
}
