//! A dataset whose test split is empty trains, but its run and model version carry no test
//! metrics (a `test_split: "empty"` note instead of figures of 0.0 that would read as a failed
//! model), and `trainyard train` says "no test split". Real Postgres, real MiniLM embeddings,
//! a tiny head run.
mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_test_split_gives_no_test_metrics() {
    let db = fresh_db().await;
    let app = spawn_api(db.pool.clone(), Arc::new(test_settings(&db.url))).await;
    let _worker = spawn_inprocess_worker(&app, 2);
    let (docs, anns) = labelled_docs("mails", &sentences(60, "empty-test"));
    assert_eq!(app.post("/api/v1/documents", docs).await.0, 200);
    assert_eq!(app.post("/api/v1/annotations", anns).await.0, 200);
    let (s, d) = app
        .post(
            "/api/v1/datasets",
            json!({"name": "no test", "selection": {"sources": ["mails"]},
                   "label_schema": {"type": "binary", "labels": ["spam"]},
                   "splits": {"train": 0.75, "validation": 0.25, "test": 0.0, "seed": 3}}),
        )
        .await;
    assert_eq!(s, 200, "{d}");
    let dataset = d["id"].as_str().unwrap().to_string();
    let d = app.wait_dataset(&dataset, Duration::from_secs(300)).await;
    assert_eq!(d["status"], "ready", "{d}");
    let per_split: Vec<(String, i64)> = sqlx::query_as(
        "SELECT split, count(*) FROM dataset_records WHERE dataset_id = $1::uuid
         GROUP BY split ORDER BY split",
    )
    .bind(&dataset)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        per_split,
        [("train".to_string(), 45), ("validation".to_string(), 15)],
        "the test split is empty"
    );

    // The client verb, as a person would run it: it follows the run and prints the outcome.
    let (url, dataset_arg) = (app.base.clone(), dataset.clone());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_trainyard"))
            .args([
                "train",
                "--url",
                &url,
                "--dataset",
                &dataset_arg,
                "--model-name",
                "notest",
                "--epochs",
                "3",
            ])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("no test split"), "{stdout}");
    assert!(!stdout.contains("test macro-F1"), "{stdout}");

    let (_, runs) = app.get("/api/v1/training-runs").await;
    let run = &runs["items"][0];
    assert_eq!(run["status"], "succeeded", "{run}");
    let test = &run["test_metrics"];
    assert_eq!(test["test_split"], "empty", "{run}");
    assert_eq!(test["rows"], 0, "{run}");
    for figure in ["macro_f1", "micro_f1", "macro_precision", "per_label"] {
        assert!(
            test.get(figure).is_none(),
            "`{figure}` must be absent: {test}"
        );
    }

    let (s, version) = app.get("/api/v1/models/notest/versions/1").await;
    assert_eq!(s, 200, "{version}");
    assert_eq!(
        version["metrics"]["test"]["test_split"], "empty",
        "{version}"
    );
    assert!(version["metrics"]["test"].get("macro_f1").is_none());
    // Validation was scored as usual: real figures, not the empty note.
    let validation_f1 = version["metrics"]["validation"]["macro_f1"].as_f64();
    assert!(validation_f1.is_some_and(|f| f > 0.0), "{version}");

    let job_id = run["job_id"].as_str().unwrap();
    let (_, job) = app.get(&format!("/api/v1/jobs/{job_id}")).await;
    assert_eq!(job["result"]["test_split"], "empty", "{job}");
    assert!(job["result"]["test_macro_f1"].is_null(), "{job}");
    db.drop_db().await;
}
