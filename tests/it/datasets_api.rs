//! Datasets end to end through the API against a real Postgres and the real local model:
//! ingest, consensus with ties and masks, splits, fan-out, reuse, records, export, delete,
//! jobs API, and the first seed's /v1 routes.

use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_reuse_export_delete() {
    let db = fresh_db().await;
    let settings = Arc::new(test_settings(&db.url));
    let app = spawn_api(db.pool.clone(), settings).await;
    let _worker = spawn_inprocess_worker(&app, 2);

    // 40 reviews labelled positive/negative, 30 emails labelled spam, one duplicate text.
    let mut docs = Vec::new();
    let mut anns = Vec::new();
    for (i, text) in sentences(40, "review").iter().enumerate() {
        docs.push(json!({"source": "reviews", "external_id": format!("r{i}"), "text": text, "tags": ["amazon"]}));
        anns.push(json!({"source": "reviews", "external_id": format!("r{i}"), "annotator": "a", "labels": {"positive": i % 2 == 0}, "annotated_at": "2024-01-01T00:00:00Z"}));
    }
    for (i, text) in sentences(30, "email").iter().enumerate() {
        docs.push(json!({"source": "emails", "external_id": format!("e{i}"), "title": format!("subject {i}"), "text": text}));
        anns.push(json!({"source": "emails", "external_id": format!("e{i}"), "annotator": "a", "labels": {"spam": i % 3 == 0}, "annotated_at": "2024-01-01T00:00:00Z"}));
    }
    // e0: a tie (a says spam, b says not) -> excluded by the default rule, flagged.
    anns.push(json!({"source": "emails", "external_id": "e0", "annotator": "b", "labels": {"spam": false}, "annotated_at": "2024-01-01T00:00:00Z"}));
    // e1: a says not spam; c said spam, then changed their mind: only c's latest vote counts,
    // so the latest votes agree (not spam) and the record is not flagged.
    anns.push(json!({"source": "emails", "external_id": "e1", "annotator": "c", "labels": {"spam": true}, "annotated_at": "2024-01-01T00:00:00Z"}));
    anns.push(json!({"source": "emails", "external_id": "e1", "annotator": "c", "labels": {"spam": false}, "annotated_at": "2024-02-01T00:00:00Z"}));
    // A duplicate of r0's text under another id: embedded once.
    docs.push(json!({"source": "reviews", "external_id": "dup", "text": sentences(40, "review")[0], "tags": ["amazon"]}));
    anns.push(json!({"source": "reviews", "external_id": "dup", "annotator": "a", "labels": {"positive": true}}));

    let (s, r) = app
        .post("/api/v1/documents", json!({"documents": docs}))
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["inserted"], 71);
    let (s, r) = app
        .post("/api/v1/annotations", json!({"annotations": anns}))
        .await;
    assert_eq!(s, 200, "{r}");

    let (s, d) = app
        .post(
            "/api/v1/datasets",
            json!({"name": "first", "selection": {"sources": ["reviews", "emails"]},
                   "label_schema": {"type": "multi_label", "labels": ["spam", "positive"]}}),
        )
        .await;
    assert_eq!(s, 200, "{d}");
    let id = d["id"].as_str().unwrap().to_string();
    let job_id = d["build_job_id"].as_str().unwrap().to_string();
    let d = app.wait_dataset(&id, Duration::from_secs(120)).await;
    assert_eq!(d["status"], "ready", "{d}");
    let stats = &d["stats"];
    assert_eq!(stats["records"], 71, "{stats}");
    assert_eq!(
        stats["unique_texts"], 70,
        "the duplicate text is embedded once"
    );
    assert_eq!(d["new_embeddings"], 70);
    assert_eq!(d["reused_embeddings"], 0);
    assert_eq!(stats["ties"], 1);
    assert_eq!(
        stats["inconsistent_labels"], 1,
        "e0 (the tie) flagged; e1's history is not a disagreement"
    );
    assert_eq!(
        d["progress"]["batches_total"], 5,
        "70 texts in batches of 16"
    );
    assert_eq!(d["progress"]["batches_done"], 5);
    // Masks: emails never annotate `positive`, reviews never `spam`.
    let splits = &stats["splits"];
    let masked_positive: i64 = ["train", "validation", "test"]
        .iter()
        .map(|s| splits[s]["labels"]["positive"]["masked"].as_i64().unwrap())
        .sum();
    assert_eq!(masked_positive, 30);
    let train = splits["train"]["records"].as_i64().unwrap();
    assert!((54..=60).contains(&train), "about 80% train, got {train}");

    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM embeddings")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored, 70);

    // Records: masked labels are null, the tie is null and flagged, history resolved.
    let (s, page) = app
        .get(&format!(
            "/api/v1/datasets/{id}/records?limit=100&with_embeddings=true"
        ))
        .await;
    assert_eq!(s, 200);
    assert_eq!(page["total"], 71);
    let items = page["items"].as_array().unwrap();
    let by_id = |x: &str| {
        items
            .iter()
            .find(|r| r["external_id"] == x)
            .unwrap()
            .clone()
    };
    assert_eq!(
        by_id("e0")["labels"],
        json!({"spam": null, "positive": null})
    );
    assert_eq!(by_id("e0")["disagreement"], true);
    assert_eq!(by_id("e1")["labels"]["spam"], 0);
    assert_eq!(
        by_id("e1")["votes"]["spam"],
        json!({"positive": 0, "negative": 2})
    );
    assert_eq!(by_id("e1")["disagreement"], false);
    assert_eq!(by_id("r1")["labels"], json!({"spam": null, "positive": 0}));
    assert_eq!(by_id("r0")["checksum"], by_id("dup")["checksum"]);
    assert_eq!(by_id("r0")["embedding"].as_array().unwrap().len(), 384);
    assert_eq!(
        by_id("e3")["text"],
        format!("subject 3\n{}", sentences(30, "email")[3])
    );

    // The build job is visible and succeeded; embed jobs belong to the dataset.
    let (_, job) = app.get(&format!("/api/v1/jobs/{job_id}")).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["kind"], "dataset_build");
    let (_, embeds) = app.get("/api/v1/jobs?kind=embed&status=succeeded").await;
    assert_eq!(embeds["total"], 5);

    // A second dataset over the emails reuses every vector.
    let (_, d2) = app
        .post("/api/v1/datasets", json!({"name": "emails", "selection": {"sources": ["emails"]}, "label_schema": {"type": "binary", "labels": ["spam"]}}))
        .await;
    let id2 = d2["id"].as_str().unwrap().to_string();
    let d2 = app.wait_dataset(&id2, Duration::from_secs(60)).await;
    assert_eq!(d2["status"], "ready");
    assert_eq!(d2["new_embeddings"], 0);
    assert_eq!(d2["reused_embeddings"], 30);

    // Export: JSONL and Parquet both carry every record and its vector.
    let jsonl = app
        .client
        .get(format!(
            "{}/api/v1/datasets/{id}/export?format=jsonl",
            app.base
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(jsonl.lines().count(), 71);
    let first: serde_json::Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
    assert_eq!(first["embedding"].as_array().unwrap().len(), 384);
    let parquet = app
        .client
        .get(format!(
            "{}/api/v1/datasets/{id}/export?format=parquet",
            app.base
        ))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(parquet).unwrap();
    assert_eq!(reader.metadata().file_metadata().num_rows(), 71);

    // Delete keeps the shared embeddings.
    let (s, r) = app.delete(&format!("/api/v1/datasets/{id}")).await;
    assert_eq!((s, r["deleted"].clone()), (200, json!(true)));
    let (s, _) = app.get(&format!("/api/v1/datasets/{id}")).await;
    assert_eq!(s, 404);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM embeddings")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored, 70);
    let (_, list) = app.get("/api/v1/datasets").await;
    assert_eq!(list["total"], 1);
    drop(_worker);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_retry_jobs_and_legacy_routes() {
    let db = fresh_db().await;
    let settings = Arc::new(test_settings(&db.url));
    let app = spawn_api(db.pool.clone(), settings).await;
    // No worker yet: the build job waits in the queue.
    let (docs, anns) = labelled_docs("s", &sentences(10, "x"));
    app.post("/api/v1/documents", docs).await;
    app.post("/api/v1/annotations", anns).await;
    let body = json!({"name": "c", "selection": {"sources": ["s"]}, "label_schema": {"type": "binary", "labels": ["spam"]}});
    let (_, d) = app.post("/api/v1/datasets", body.clone()).await;
    let job = d["build_job_id"].as_str().unwrap().to_string();
    let (_, j) = app.get(&format!("/api/v1/jobs/{job}")).await;
    assert_eq!(j["status"], "queued");
    let (s, j) = app
        .post(&format!("/api/v1/jobs/{job}/cancel"), json!({}))
        .await;
    assert_eq!(s, 200, "{j}");
    assert_eq!(j["status"], "cancelled");
    let (s, _) = app
        .post(&format!("/api/v1/jobs/{job}/cancel"), json!({}))
        .await;
    assert_eq!(s, 409, "a cancelled job cannot be cancelled again");
    let (_, ds) = app
        .get(&format!("/api/v1/datasets/{}", d["id"].as_str().unwrap()))
        .await;
    assert_eq!(ds["status"], "cancelled");

    // The cancelled job never runs, even with a worker present.
    let worker = spawn_inprocess_worker(&app, 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, j) = app.get(&format!("/api/v1/jobs/{job}")).await;
    assert_eq!(j["status"], "cancelled");
    assert_eq!(j["attempts"], 0);

    // Retry puts it back; it then runs to the end.
    let (s, j) = app
        .post(&format!("/api/v1/jobs/{job}/retry"), json!({}))
        .await;
    assert_eq!(s, 200, "{j}");
    let d = app
        .wait_dataset(d["id"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    assert_eq!(d["status"], "ready", "{d}");
    let (s, _) = app
        .post(&format!("/api/v1/jobs/{job}/retry"), json!({}))
        .await;
    assert_eq!(s, 409, "a succeeded job is not retried");

    // Readiness shows the database, migrations, queues and this live worker.
    let (s, h) = app.get("/api/v1/health").await;
    assert_eq!(
        (s, h["status"].clone(), h["database"].clone()),
        (200, json!("ok"), json!("ok")),
        "{h}"
    );
    assert_eq!(h["migrations_applied"], h["migrations_known"]);
    assert!(
        h["live_workers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().starts_with("test-")),
        "{h}"
    );
    assert!(
        h["queues"]
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["queue"] == "dataset_build"),
        "{h}"
    );

    // The first seed's routes answer on top of the new API.
    let (s, h) = app.get("/v1/health").await;
    assert_eq!((s, h["status"].clone()), (200, json!("healthy")));
    let (_, m) = app.get("/v1/models/embedding").await;
    assert!(m["models"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == "all-MiniLM-L6-v2"));
    sqlx::query(
        "CREATE TABLE bilibili_metadata (aid bigint, title text, description text, tag text)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("CREATE TABLE video_type_label (aid bigint, username text, label boolean, created_at timestamptz)").execute(&db.pool).await.unwrap();
    sqlx::query("INSERT INTO bilibili_metadata SELECT g, 'video ' || g, 'about thing ' || g, 'tag' || (g % 3) || ',music' FROM generate_series(1, 12) g")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO video_type_label SELECT g, u, (g + length(u)) % 2 = 0, now() FROM generate_series(1, 12) g, unnest(ARRAY['ann', 'bob', 'cy']) u")
        .execute(&db.pool)
        .await
        .unwrap();
    let (s, b) = app
        .post(
            "/v1/dataset/build",
            json!({"aid_list": [1, 2, 3, 4, 5, 6, 7, 8], "embedding_model": "all-MiniLM-L6-v2"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["status"], "started");
    let legacy_id = b["dataset_id"].as_str().unwrap().to_string();
    let d = app.wait_dataset(&legacy_id, Duration::from_secs(60)).await;
    assert_eq!(d["status"], "ready", "{d}");
    assert_eq!(d["stats"]["records"], 8);
    let (_, l) = app.get(&format!("/v1/dataset/{legacy_id}")).await;
    assert_eq!(l["status"], "completed");
    let (_, all) = app.get("/v1/datasets").await;
    assert_eq!(all["count"], 2);
    let (s, _) = app.delete(&format!("/v1/dataset/{legacy_id}")).await;
    assert_eq!(s, 200);
    drop(worker);
    db.drop_db().await;
}

/// A build of the same request over an unchanged corpus copies the earlier build's records (and
/// says so); one vote more, and the next build reads the corpus again and sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identical_build_copies_records_until_the_corpus_changes() {
    let db = fresh_db().await;
    let settings = Arc::new(test_settings(&db.url));
    let app = spawn_api(db.pool.clone(), settings).await;
    let _worker = spawn_inprocess_worker(&app, 2);
    let (docs, anns) = labelled_docs("mail", &sentences(60, "copy"));
    assert_eq!(app.post("/api/v1/documents", docs).await.0, 200);
    assert_eq!(app.post("/api/v1/annotations", anns).await.0, 200);
    let request = json!({"name": "spam", "selection": {"sources": ["mail"]},
                         "label_schema": {"type": "binary", "labels": ["spam"]}});
    let build = |name: &'static str| {
        let mut body = request.clone();
        body["name"] = json!(name);
        let app = &app;
        async move {
            let (s, d) = app.post("/api/v1/datasets", body).await;
            assert_eq!(s, 200, "{d}");
            let d = app
                .wait_dataset(d["id"].as_str().unwrap(), Duration::from_secs(120))
                .await;
            assert_eq!(d["status"], "ready", "{d}");
            d
        }
    };
    let records = |id: String| {
        let app = &app;
        async move {
            let (s, page) = app
                .get(&format!("/api/v1/datasets/{id}/records?limit=100"))
                .await;
            assert_eq!(s, 200);
            page["items"].as_array().unwrap().clone()
        }
    };
    let first = build("first").await;
    assert!(first["stats"].get("records_from_dataset").is_none());
    let second = build("second").await;
    assert_eq!(
        second["stats"]["records_from_dataset"], first["id"],
        "{second}"
    );
    assert_eq!(second["stats"]["records"], 60);
    assert_eq!(second["new_embeddings"], 0);
    assert_eq!(second["reused_embeddings"], 60);
    let (a, b) = (
        records(first["id"].as_str().unwrap().into()).await,
        records(second["id"].as_str().unwrap().into()).await,
    );
    assert_eq!(a, b, "the same records, splits and positions");

    // d1 (not spam for alice) gets a second vote, spam: a tie, masked by the default rule.
    let vote = json!({"annotations": [{"source": "mail", "external_id": "d1", "annotator": "bob",
                                        "labels": {"spam": true}}]});
    assert_eq!(app.post("/api/v1/annotations", vote).await.0, 200);
    let third = build("third").await;
    assert!(
        third["stats"].get("records_from_dataset").is_none(),
        "{third}"
    );
    assert_eq!(third["stats"]["ties"], 1);
    let c = records(third["id"].as_str().unwrap().into()).await;
    let d1 = c.iter().find(|r| r["external_id"] == "d1").unwrap();
    assert_eq!(d1["labels"]["spam"], Value::Null);
    assert_eq!(d1["disagreement"], true);
    db.drop_db().await;
}
