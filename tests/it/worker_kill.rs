//! SIGKILL a worker process in the middle of a build: the build still completes on the other
//! worker, every embedding is stored exactly once, and no job is lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_survives_a_killed_worker() {
    let db = fresh_db().await;
    let settings = Arc::new(test_settings(&db.url));
    let app = spawn_api(db.pool.clone(), settings).await;
    let texts = sentences(600, "kill");
    let (docs, anns) = labelled_docs("k", &texts);
    assert_eq!(app.post("/api/v1/documents", docs).await.0, 200);
    assert_eq!(app.post("/api/v1/annotations", anns).await.0, 200);

    let mut victim = spawn_worker_process(&db.url, "victim", 1);
    let survivor = spawn_worker_process(&db.url, "survivor", 1);
    let (_, d) = app
        .post("/api/v1/datasets", json!({"name": "k", "selection": {"sources": ["k"]}, "label_schema": {"type": "binary", "labels": ["spam"]}}))
        .await;
    let id = d["id"].as_str().unwrap().to_string();

    // Wait until the victim holds a running embed job, then kill it without warning.
    let started = Instant::now();
    loop {
        let running: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM apalis.jobs WHERE job_type = 'embed' AND status = 'Running' AND lock_by LIKE 'victim-%'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM apalis.jobs WHERE job_type = 'embed' AND status = 'Done'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if running > 0 && done > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the victim never took an embed job"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    victim.0.kill().unwrap(); // SIGKILL: no shutdown, no cleanup
    let _ = victim.0.wait();

    let d = app.wait_dataset(&id, Duration::from_secs(240)).await;
    assert_eq!(d["status"], "ready", "{d}");
    let total = d["progress"]["batches_total"].as_i64().unwrap();
    assert_eq!(total, 38, "600 texts in batches of 16");
    assert_eq!(d["progress"]["batches_done"], total);
    assert_eq!(
        d["new_embeddings"].as_i64().unwrap() + d["reused_embeddings"].as_i64().unwrap(),
        600
    );

    // Exactly once: one row per unique checksum, every batch done once, every job finished.
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT checksum) FROM embeddings")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((rows, distinct), (600, 600));
    let undone: i64 = sqlx::query_scalar("SELECT count(*) FROM embed_batches WHERE NOT done")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(undone, 0);
    let new_sum: i64 = sqlx::query_scalar("SELECT sum(new_count) FROM embed_batches")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(new_sum, 600, "no batch counted twice");
    let statuses: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM apalis.jobs GROUP BY status ORDER BY status")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        statuses,
        vec![("Done".to_string(), 39)],
        "38 embed jobs + 1 build, none lost"
    );
    let recovered: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM apalis.jobs WHERE job_type = 'embed' AND attempts > 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        recovered >= 1,
        "the killed worker's job was re-run by the survivor"
    );

    drop(survivor);
    db.drop_db().await;
}
