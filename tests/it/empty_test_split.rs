//! Empty splits: a dataset whose test (or validation) split is empty trains, but its run and
//! model version carry no test (or validation) metrics (a `test_split: "empty"` or
//! `validation_split: "empty"` note instead of figures of 0.0 that would read as a failed
//! model), and `trainyard train` says "no test split" (or "no validation split"). Without a
//! validation split, early stopping follows the training loss, every threshold is 0.5, and
//! `auto_promote` never replaces a served version. Real Postgres, real MiniLM embeddings, tiny
//! head runs.

use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use serde_json::json;

/// 60 labelled documents in a dataset with the given split fractions, built; the dataset's id
/// and its record count per split.
async fn dataset_with_splits(
    app: &TestApp,
    db: &TestDb,
    salt: &str,
    splits: serde_json::Value,
) -> (String, Vec<(String, i64)>) {
    let (docs, anns) = labelled_docs("mails", &sentences(60, salt));
    assert_eq!(app.post("/api/v1/documents", docs).await.0, 200);
    assert_eq!(app.post("/api/v1/annotations", anns).await.0, 200);
    let (s, d) = app
        .post(
            "/api/v1/datasets",
            json!({"name": salt, "selection": {"sources": ["mails"]},
                   "label_schema": {"type": "binary", "labels": ["spam"]},
                   "splits": splits}),
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
    (dataset, per_split)
}

/// `trainyard train` as a person would run it: it follows the run and prints the outcome.
async fn train_cli(app: &TestApp, dataset: &str, model: &str, epochs: u32) -> std::process::Output {
    let args: Vec<String> = [
        "train",
        "--url",
        &app.base,
        "--dataset",
        dataset,
        "--model-name",
        model,
        "--epochs",
        &epochs.to_string(),
    ]
    .map(str::to_string)
    .to_vec();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_trainyard"))
            .args(&args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_test_split_gives_no_test_metrics() {
    let db = fresh_db().await;
    let app = spawn_api(db.pool.clone(), Arc::new(test_settings(&db.url))).await;
    let _worker = spawn_inprocess_worker(&app, 2);
    let (dataset, per_split) = dataset_with_splits(
        &app,
        &db,
        "empty-test",
        json!({"train": 0.75, "validation": 0.25, "test": 0.0, "seed": 3}),
    )
    .await;
    assert_eq!(
        per_split,
        [("train".to_string(), 45), ("validation".to_string(), 15)],
        "the test split is empty"
    );

    let out = train_cli(&app, &dataset, "notest", 3).await;
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

/// Polls a training run until it has finished.
async fn finished_run(app: &TestApp, id: &str) -> serde_json::Value {
    let run = wait_training_run(app, id, Duration::from_secs(300)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_validation_split_gives_no_validation_metrics() {
    let db = fresh_db().await;
    let app = spawn_api(db.pool.clone(), Arc::new(test_settings(&db.url))).await;
    let _worker = spawn_inprocess_worker(&app, 2);
    let (dataset, per_split) = dataset_with_splits(
        &app,
        &db,
        "empty-validation",
        json!({"train": 0.75, "validation": 0.0, "test": 0.25, "seed": 3}),
    )
    .await;
    assert_eq!(
        per_split,
        [("test".to_string(), 15), ("train".to_string(), 45)],
        "the validation split is empty"
    );

    // The client verb: it says there is no validation split, per epoch and at the end.
    let out = train_cli(&app, &dataset, "noval", 4).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("no validation split"), "{stdout}");
    assert!(
        stdout.contains("test macro-F1"),
        "the test split is scored: {stdout}"
    );
    assert!(
        stderr.contains("epoch 1: train loss") && stderr.contains("no validation split"),
        "{stderr}"
    );
    assert!(!stderr.contains("validation macro-F1"), "{stderr}");

    let (_, runs) = app.get("/api/v1/training-runs").await;
    let run = runs["items"][0].clone();
    let id = run["id"].as_str().unwrap().to_string();
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(
        run["validation_metrics"],
        json!({"validation_split": "empty", "rows": 0}),
        "{run}"
    );
    assert!(run["test_metrics"]["macro_f1"].is_f64(), "{run}");
    // Thresholds: nothing to tune them on, so the default for every label.
    assert_eq!(run["thresholds"], json!({"spam": 0.5}), "{run}");

    // Every epoch: a training loss, no validation loss, no validation figure.
    let (_, series) = app
        .get(&format!("/api/v1/training-runs/{id}/metrics"))
        .await;
    let epochs = series["epochs"].as_array().unwrap();
    assert!(!epochs.is_empty(), "{series}");
    for e in epochs {
        assert_eq!(
            e["metrics"],
            json!({"validation_split": "empty", "rows": 0}),
            "{e}"
        );
        assert!(e["val_loss"].is_null(), "{e}");
        assert!(e["train_loss"].is_f64(), "{e}");
    }
    // Early stopping and the best epoch follow the training loss: the best epoch has the
    // lowest, and best_metric is its negation.
    let losses: Vec<(i64, f64)> = epochs
        .iter()
        .map(|e| {
            (
                e["epoch"].as_i64().unwrap(),
                e["train_loss"].as_f64().unwrap(),
            )
        })
        .collect();
    let (best_epoch, lowest) =
        losses
            .iter()
            .copied()
            .fold((0, f64::INFINITY), |b, e| if e.1 < b.1 { e } else { b });
    assert_eq!(
        run["best_epoch"].as_i64(),
        Some(best_epoch),
        "{losses:?} {run}"
    );
    assert_eq!(
        run["best_metric"].as_f64(),
        Some(-lowest),
        "{losses:?} {run}"
    );
    // The curves plot the training loss alone.
    let svg = reqwest::get(format!("{}/api/v1/training-runs/{id}/curves.svg", app.base))
        .await
        .unwrap();
    assert_eq!(svg.status().as_u16(), 200);

    let (s, version) = app.get("/api/v1/models/noval/versions/1").await;
    assert_eq!(s, 200, "{version}");
    assert_eq!(
        version["metrics"]["validation"],
        json!({"validation_split": "empty", "rows": 0}),
        "{version}"
    );
    assert!(version["metrics"]["test"]["macro_f1"].is_f64(), "{version}");
    let job_id = run["job_id"].as_str().unwrap();
    let (_, job) = app.get(&format!("/api/v1/jobs/{job_id}")).await;
    assert_eq!(job["result"]["validation_split"], "empty", "{job}");

    // auto_promote: with nothing served, the new version is served; with a version served, a
    // version without validation figures never replaces it (nothing says it is better).
    for (run_number, served_after) in [(2, 2), (3, 2)] {
        let (s, created) = app
            .post(
                "/api/v1/training-runs",
                json!({"dataset_id": dataset, "model_name": "noval", "auto_promote": true,
                       "hyperparameters": {"epochs": 2}}),
            )
            .await;
        assert_eq!(s, 202, "{created}");
        let run = finished_run(&app, created["id"].as_str().unwrap()).await;
        assert_eq!(run["model_version"], run_number, "{run}");
        let (_, models) = app.get("/api/v1/models").await;
        let model = models
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "noval")
            .cloned()
            .unwrap();
        assert_eq!(
            model["served_version"], served_after,
            "run {run_number}: {model}"
        );
    }
    db.drop_db().await;
}
