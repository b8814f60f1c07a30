//! The OpenAI-compatible provider against a real HTTP server that injects faults: 429 with
//! Retry-After, 500, a hang past the timeout, malformed JSON, a wrong dimension count.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;
use poem::listener::{Acceptor, Listener};
use poem::web::{Data, Json};
use poem::{handler, EndpointExt, Response, Route};
use serde_json::{json, Value};
use trainyard::config::{EmbeddingModelConfig, EmbeddingProvider, OpenAiCompatibleProvider};
use trainyard::embedding::openai_compatible::OpenAiCompatibleClient;
use trainyard::embedding::EmbedError;

#[derive(Clone, Debug)]
enum Fault {
    Ok,
    Status(u16, Option<&'static str>),
    /// 429 with `Retry-After` as an HTTP-date this many seconds after the request.
    RetryAtDate(u64),
    Hang(u64),
    Garbage,
    WrongDims,
}

#[derive(Clone, Default)]
struct Script {
    faults: Arc<Mutex<VecDeque<Fault>>>,
    /// Used when the script is empty.
    fallback: Arc<Mutex<Option<Fault>>>,
    requests: Arc<Mutex<Vec<Instant>>>,
}

const DIMS: usize = 8;

/// The vector the server returns for a text: its length, then 1..DIMS.
fn vector_for(text: &str) -> Vec<f32> {
    (0..DIMS)
        .map(|i| if i == 0 { text.len() as f32 } else { i as f32 })
        .collect()
}

#[handler]
async fn embeddings(script: Data<&Script>, body: Json<Value>) -> Response {
    script.requests.lock().unwrap().push(Instant::now());
    let fault = script
        .faults
        .lock()
        .unwrap()
        .pop_front()
        .or_else(|| script.fallback.lock().unwrap().clone())
        .unwrap_or(Fault::Ok);
    let inputs: Vec<String> = serde_json::from_value(body["input"].clone()).unwrap_or_default();
    let ok = |dims: usize| {
        let data: Vec<Value> = inputs
            .iter()
            .enumerate()
            .map(|(i, t)| json!({"object": "embedding", "index": i, "embedding": vector_for(t)[..dims.min(DIMS)].to_vec()}))
            .collect();
        Response::builder()
            .content_type("application/json")
            .body(json!({"object": "list", "data": data}).to_string())
    };
    match fault {
        Fault::Ok => ok(DIMS),
        Fault::WrongDims => ok(DIMS - 3),
        Fault::Garbage => Response::builder()
            .content_type("application/json")
            .body("{\"data\": [ oops"),
        Fault::Hang(secs) => {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            ok(DIMS)
        }
        Fault::RetryAtDate(secs) => Response::builder()
            .status(poem::http::StatusCode::TOO_MANY_REQUESTS)
            .header(
                "Retry-After",
                httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(secs)),
            )
            .body(json!({"error": {"message": "injected"}}).to_string()),
        Fault::Status(code, retry_after) => {
            let mut r = Response::builder().status(poem::http::StatusCode::from_u16(code).unwrap());
            if let Some(ra) = retry_after {
                r = r.header("Retry-After", ra);
            }
            r.body(json!({"error": {"message": "injected"}}).to_string())
        }
    }
}

async fn fault_server(script: Script) -> String {
    let acceptor = poem::listener::TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .unwrap();
    let addr = acceptor.local_addr()[0].as_socket_addr().cloned().unwrap();
    let app = Route::new()
        .at("/v1/embeddings", poem::post(embeddings))
        .data(script);
    tokio::spawn(async move { poem::Server::new_with_acceptor(acceptor).run(app).await });
    format!("http://{addr}/v1")
}

fn model(endpoint: &str, max_attempts: u32) -> EmbeddingModelConfig {
    EmbeddingModelConfig {
        name: "faulty".into(),
        dimensions: DIMS,
        provider: EmbeddingProvider::OpenAiCompatible(OpenAiCompatibleProvider {
            api_endpoint: endpoint.into(),
            api_key_env: None,
            max_concurrency: 1,
            max_attempts,
            timeout_secs: 0.5,
        }),
        max_tokens: 512,
        max_batch_size: 4,
    }
}

fn client(endpoint: &str, max_attempts: u32) -> OpenAiCompatibleClient {
    let mut c = OpenAiCompatibleClient::new(model(endpoint, max_attempts)).unwrap();
    c.min_delay = Duration::from_millis(20);
    c.max_delay = Duration::from_millis(100);
    c
}

fn texts(n: usize) -> Vec<String> {
    (0..n).map(|i| "t".repeat(i + 1)).collect()
}

#[tokio::test]
async fn retries_each_transient_fault_and_honours_retry_after() {
    quiet_init();
    let script = Script::default();
    script.faults.lock().unwrap().extend([
        Fault::Status(429, Some("1")),
        Fault::Status(500, None),
        Fault::Hang(3),
        Fault::Garbage,
        Fault::Status(503, None),
        Fault::Ok,
    ]);
    let url = fault_server(script.clone()).await;
    let started = Instant::now();
    let vectors = client(&url, 8).embed(&texts(3)).await.unwrap();
    assert_eq!(
        vectors,
        texts(3).iter().map(|t| vector_for(t)).collect::<Vec<_>>()
    );
    let times = script.requests.lock().unwrap().clone();
    assert_eq!(times.len(), 6, "one request per fault, then success");
    let waited = times[1] - times[0];
    assert!(
        waited >= Duration::from_millis(950),
        "Retry-After: 1 honoured, waited {waited:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the hang was cut by the 0.5 s timeout"
    );
}

#[tokio::test]
async fn retry_after_as_an_http_date_is_honoured_and_garbage_is_ignored() {
    quiet_init();
    let script = Script::default();
    script.faults.lock().unwrap().extend([
        Fault::RetryAtDate(2),
        Fault::Status(503, Some("-5")),
        Fault::Status(503, Some("soon")),
        Fault::Ok,
    ]);
    let url = fault_server(script.clone()).await;
    let vectors = client(&url, 8).embed(&texts(2)).await.unwrap();
    assert_eq!(vectors.len(), 2);
    let times = script.requests.lock().unwrap().clone();
    assert_eq!(times.len(), 4, "one request per fault, then success");
    // The date has whole seconds: 2 s ahead, truncated, is a wait of more than 1 s.
    let waited = times[1] - times[0];
    assert!(
        waited >= Duration::from_millis(950),
        "HTTP-date Retry-After honoured, waited {waited:?}"
    );
    // Unusable values fall back to the planned backoff (20-100 ms here), no panic, no stall.
    let garbage_waits = times[3] - times[1];
    assert!(
        garbage_waits < Duration::from_secs(1),
        "garbage Retry-After ignored, waited {garbage_waits:?}"
    );
}

#[tokio::test]
async fn batches_keep_order_and_a_failed_batch_fails_the_call() {
    quiet_init();
    let script = Script::default();
    let url = fault_server(script.clone()).await;
    let v = client(&url, 3).embed(&texts(10)).await.unwrap();
    assert_eq!(v.len(), 10);
    assert_eq!(
        script.requests.lock().unwrap().len(),
        3,
        "10 texts in batches of 4"
    );
    assert_eq!(v[9][0], 10.0);

    *script.fallback.lock().unwrap() = Some(Fault::Status(500, None));
    script.requests.lock().unwrap().clear();
    let err = client(&url, 3).embed(&texts(2)).await.unwrap_err();
    assert!(matches!(err, EmbedError::Retryable(_)), "{err:?}");
    assert!(
        err.to_string().contains("gave up after 3 attempts") && err.to_string().contains("500"),
        "{err}"
    );
    assert_eq!(script.requests.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn wrong_dimensions_and_client_errors_are_not_retried() {
    quiet_init();
    let script = Script::default();
    let url = fault_server(script.clone()).await;
    script.faults.lock().unwrap().push_back(Fault::WrongDims);
    let err = client(&url, 5).embed(&texts(2)).await.unwrap_err();
    assert!(
        matches!(err, EmbedError::Fatal(_)) && err.to_string().contains("5 dimensions"),
        "{err}"
    );
    assert_eq!(script.requests.lock().unwrap().len(), 1);
    script
        .faults
        .lock()
        .unwrap()
        .push_back(Fault::Status(401, None));
    let err = client(&url, 5).embed(&texts(2)).await.unwrap_err();
    assert!(
        matches!(err, EmbedError::Fatal(_)) && err.to_string().contains("401"),
        "{err}"
    );
    assert_eq!(script.requests.lock().unwrap().len(), 2);
}

/// Through the queue: a provider that keeps failing fails the job (with backoff between
/// attempts) and the dataset with a clear error, and nothing is stored; a flaky one succeeds
/// and stores exactly what the server sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_provider_fails_the_dataset_and_stores_nothing() {
    let db = fresh_db().await;
    let script = Script::default();
    let url = fault_server(script.clone()).await;
    let mut settings = test_settings(&db.url);
    settings.queue.max_attempts = 2;
    settings.queue.retry_base_secs = 0.5;
    settings
        .embedding_models
        .insert("faulty".into(), model(&url, 2));
    let app = spawn_api(db.pool.clone(), Arc::new(settings)).await;
    let _worker = spawn_inprocess_worker(&app, 1);
    let (docs, anns) = labelled_docs("s", &sentences(6, "f"));
    app.post("/api/v1/documents", docs).await;
    app.post("/api/v1/annotations", anns).await;

    *script.fallback.lock().unwrap() = Some(Fault::Status(500, None));
    let body = json!({"name": "f", "selection": {"sources": ["s"]}, "embedding_model": "faulty", "label_schema": {"type": "binary", "labels": ["spam"]}});
    let (_, d) = app.post("/api/v1/datasets", body.clone()).await;
    let d = app
        .wait_dataset(d["id"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    assert_eq!(d["status"], "failed", "{d}");
    let error = d["error"].as_str().unwrap();
    assert!(
        error.contains("HTTP 500") && error.contains("gave up after 2 attempts"),
        "{error}"
    );
    // The dataset fails inside the last attempt; apalis records the attempt just after.
    let mut jobs = app.get("/api/v1/jobs?kind=embed").await.1;
    for _ in 0..50 {
        if jobs["items"][0]["status"] != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        jobs = app.get("/api/v1/jobs?kind=embed").await.1;
    }
    let job = &jobs["items"][0];
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["attempts"], 2);
    assert!(job["last_error"].as_str().unwrap().contains("HTTP 500"));
    // 2 job attempts x 2 request attempts, with the job's backoff (0.5 s) between them.
    let times = script.requests.lock().unwrap().clone();
    assert_eq!(times.len(), 4, "{times:?}");
    assert!(
        times[2] - times[1] >= Duration::from_millis(450),
        "backoff between job attempts: {:?}",
        times[2] - times[1]
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM embeddings")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0, "a failed batch stores nothing (no zero vectors)");

    // Flaky: garbage then 429 then fine.
    *script.fallback.lock().unwrap() = None;
    script
        .faults
        .lock()
        .unwrap()
        .extend([Fault::Garbage, Fault::Status(429, Some("0"))]);
    let (_, d) = app.post("/api/v1/datasets", body).await;
    let d = app
        .wait_dataset(d["id"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    assert_eq!(d["status"], "ready", "{d}");
    let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
        "SELECT r.text, e.vector FROM dataset_records r JOIN embeddings e ON e.checksum = r.checksum AND e.model = 'faulty'
         WHERE r.dataset_id = $1",
    )
    .bind(uuid::Uuid::parse_str(d["id"].as_str().unwrap()).unwrap())
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 6);
    for (text, bytes) in rows {
        assert_eq!(
            trainyard::embedding::bytes_to_vector(&bytes),
            vector_for(&text)
        );
    }
    db.drop_db().await;
}
