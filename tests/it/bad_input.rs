//! Every request that can be wrong gets a clear 4xx in the one JSON error shape.

use std::sync::Arc;

use crate::support::*;
use serde_json::{json, Value};

fn assert_error(status: u16, body: &Value, want_status: u16, needle: &str) {
    assert_eq!(status, want_status, "{body}");
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("error shape: {body}"));
    assert!(body["error"]["code"].is_string(), "{body}");
    assert!(
        message.to_lowercase().contains(&needle.to_lowercase()),
        "`{message}` should mention `{needle}`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_4xx() {
    let db = fresh_db().await;
    let mut settings = test_settings(&db.url);
    settings.server.max_body_bytes = 64 * 1024;
    let app = spawn_api(db.pool.clone(), Arc::new(settings)).await;
    let ds = |extra: Value| {
        let mut body = json!({"name": "x", "selection": {"sources": ["s"]}, "label_schema": {"type": "binary", "labels": ["spam"]}});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };

    let (s, b) = app
        .post(
            "/api/v1/datasets",
            ds(json!({"embedding_model": "no-such-model"})),
        )
        .await;
    assert_error(s, &b, 422, "unknown embedding model");
    assert_eq!(b["error"]["code"], "unknown_model");
    let (s, b) = app
        .post("/api/v1/datasets", ds(json!({"selection": {}})))
        .await;
    assert_error(s, &b, 422, "selection is empty");
    assert_eq!(b["error"]["code"], "invalid_selection");
    let (s, b) = app
        .post(
            "/api/v1/datasets",
            ds(json!({"splits": {"train": 0.9, "validation": 0.2, "test": 0.1}})),
        )
        .await;
    assert_error(s, &b, 422, "sum to 1");
    let (s, b) = app
        .post(
            "/api/v1/datasets",
            ds(json!({"label_schema": {"type": "binary", "labels": ["a", "b"]}})),
        )
        .await;
    assert_error(s, &b, 422, "labels");
    // Declared limits are enforced before the handler runs: 400 naming the field.
    let (s, b) = app
        .post(
            "/api/v1/datasets",
            ds(json!({"splits": {"train": 1.5, "validation": 0.0, "test": 0.0}})),
        )
        .await;
    assert_error(s, &b, 400, "train");
    let (s, b) = app
        .post("/api/v1/datasets", ds(json!({"name": "x".repeat(201)})))
        .await;
    assert_error(s, &b, 400, "name");
    let (s, b) = app.post("/batch", json!({"texts": vec!["a"; 1025]})).await;
    assert_error(s, &b, 400, "texts");
    let (s, b) = app.get("/api/v1/datasets?limit=1001").await;
    assert_error(s, &b, 400, "limit");
    let (s, b) = app.get("/api/v1/jobs?kind=sleep").await;
    assert_error(s, &b, 400, "kind");
    let (s, b) = app
        .post(
            "/api/v1/datasets",
            ds(json!({"label_schema": {"type": "sideways", "labels": ["a"]}})),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    let (s, b) = app.post("/api/v1/datasets", ds(json!({"name": ""}))).await;
    assert_error(s, &b, 400, "name");
    // Blank names and repeated labels break the declared `pattern` / `uniqueItems`: 400 too.
    let (s, b) = app
        .post("/api/v1/datasets", ds(json!({"name": " \u{3000}\u{1f}"})))
        .await;
    assert_error(s, &b, 400, "name");
    let (s, b) = app
        .post(
            "/api/v1/datasets",
            ds(json!({"label_schema": {"type": "multi_label", "labels": ["a", "a"]}})),
        )
        .await;
    assert_error(s, &b, 400, "labels");
    let (s, b) = app
        .post(
            "/api/v1/datasets",
            ds(json!({"label_schema": {"type": "multi_label", "labels": ["a", "  "]}})),
        )
        .await;
    assert_error(s, &b, 400, "labels");

    // Ids that are not ids, and ids that do not exist.
    let (s, b) = app.get("/api/v1/datasets/not-a-uuid").await;
    assert_error(s, &b, 400, "`id`");
    let (s, b) = app
        .get(&format!("/api/v1/datasets/{}", uuid::Uuid::new_v4()))
        .await;
    assert_error(s, &b, 404, "not found");
    let (s, b) = app.get("/api/v1/jobs/123").await;
    assert_error(s, &b, 400, "`id`");
    let (s, b) = app.get("/api/v1/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV").await;
    assert_error(s, &b, 404, "not found");
    let (s, b) = app.get("/api/v1/jobs?status=sleeping").await;
    assert_error(s, &b, 400, "`status`");
    let (s, b) = app.get("/api/v1/jobs?limit=0").await;
    assert_error(s, &b, 400, "limit");
    let (s, b) = app.get("/api/v1/datasets?offset=-1").await;
    assert_error(s, &b, 400, "offset");

    // Documents: empty text, empty batch, missing fields, unknown document in annotations.
    let (s, b) = app
        .post(
            "/api/v1/documents",
            json!({"documents": [{"source": "s", "external_id": "1", "text": "   "}]}),
        )
        .await;
    assert_error(s, &b, 422, "no text");
    let (s, b) = app
        .post(
            "/api/v1/documents",
            json!({"documents": [{"source": "\t", "external_id": "1", "text": "hi"}]}),
        )
        .await;
    assert_error(s, &b, 400, "source");
    let (s, b) = app
        .post("/api/v1/documents", json!({"documents": []}))
        .await;
    assert_error(s, &b, 400, "documents");
    let (s, b) = app
        .post(
            "/api/v1/documents",
            json!({"documents": [{"external_id": "1", "text": "hi"}]}),
        )
        .await;
    assert_error(s, &b, 400, "`documents[0].source` is required");
    assert_eq!(b["error"]["param"], "documents[0].source", "{b}");
    let (s, b) = app
        .post(
            "/api/v1/documents",
            json!({"documents": [{"source": "s", "external_id": "1", "text": "hi", "tags": "a,b"}]}),
        )
        .await;
    assert_error(
        s,
        &b,
        400,
        "`documents[0].tags` must be an array, not a string",
    );
    let (s, b) = app.post("/api/v1/annotations", json!({"annotations": [{"source": "s", "external_id": "nope", "annotator": "a", "labels": {"spam": true}}]})).await;
    assert_error(s, &b, 422, "do not exist");
    // Label names are keys, which OpenAPI 3.0 cannot constrain: a blank one is a 422.
    let (s, b) = app.post("/api/v1/annotations", json!({"annotations": [{"source": "s", "external_id": "1", "annotator": "a", "labels": {" ": true}}]})).await;
    assert_error(s, &b, 422, "label names");
    let (s, b) = app.post("/api/v1/annotations", json!({"annotations": [{"source": "s", "external_id": "1", "annotator": " ", "labels": {"spam": true}}]})).await;
    assert_error(s, &b, 400, "annotator");
    let (s, b) = app.post("/api/v1/annotations", json!({"annotations": [{"source": "s", "external_id": "1", "annotator": "a", "labels": {"spam": "maybe"}}]})).await;
    assert_eq!(s, 400, "{b}");

    // Malformed JSON and the wrong content type.
    let r = app
        .client
        .post(format!("{}/api/v1/datasets", app.base))
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    let (s, b) = (r.status().as_u16(), r.json::<Value>().await.unwrap());
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["error"]["code"], "invalid_request");
    let r = app
        .client
        .post(format!("{}/api/v1/datasets", app.base))
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());
    assert!(r.json::<Value>().await.unwrap()["error"]["message"].is_string());

    // Huge bodies: refused by Content-Length, and when streamed without one.
    let huge = "x".repeat(200 * 1024);
    let (s, b) = app
        .post(
            "/api/v1/documents",
            json!({"documents": [{"source": "s", "external_id": "1", "text": huge}]}),
        )
        .await;
    assert_error(s, &b, 413, "larger than");
    // A chunked body (no Content-Length) is cut off at the limit; raw TCP so that the
    // server's early answer can be read even though it stops reading the body.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = app.base.trim_start_matches("http://").to_string();
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!("POST /api/v1/documents HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
        tcp.write_all(head.as_bytes()).await.unwrap();
        let chunk = format!("1000\r\n{}\r\n", " ".repeat(4096));
        for _ in 0..40 {
            if tcp.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
        }
        let _ = tcp.write_all(b"0\r\n\r\n").await;
        let mut answer = vec![0u8; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), tcp.read(&mut answer))
            .await
            .unwrap()
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("larger than"), "{answer}");
    }

    // /v1/embeddings: OpenAI-shaped errors.
    let (s, b) = app
        .post(
            "/v1/embeddings",
            json!({"model": "gpt-nothing", "input": "hi"}),
        )
        .await;
    assert_error(s, &b, 404, "does not exist");
    assert_eq!(b["error"]["code"], "model_not_found");
    let (s, b) = app
        .post(
            "/v1/embeddings",
            json!({"model": "all-MiniLM-L6-v2", "input": ""}),
        )
        .await;
    assert_error(s, &b, 400, "empty");
    let (s, b) = app
        .post(
            "/v1/embeddings",
            json!({"model": "all-MiniLM-L6-v2", "input": []}),
        )
        .await;
    assert_error(s, &b, 400, "empty array");
    let (s, b) = app
        .post(
            "/v1/embeddings",
            json!({"model": "all-MiniLM-L6-v2", "input": [1, 2, 3]}),
        )
        .await;
    assert_error(s, &b, 400, "token arrays");
    let (s, b) = app
        .post(
            "/v1/embeddings",
            json!({"model": "all-MiniLM-L6-v2", "input": "hi", "dimensions": 12}),
        )
        .await;
    assert_error(s, &b, 400, "dimensions");
    let (s, b) = app
        .post(
            "/v1/embeddings",
            json!({"model": "all-MiniLM-L6-v2", "input": "hi", "encoding_format": "hex"}),
        )
        .await;
    assert_eq!(s, 400, "{b}");

    // Legacy routes and unknown routes.
    let (s, b) = app.post("/v1/dataset/build", json!({"aid_list": []})).await;
    assert_error(s, &b, 400, "aid_list");
    let (s, b) = app.get("/api/v1/nothing-here").await;
    assert_error(s, &b, 404, "no such route");
    db.drop_db().await;
}
