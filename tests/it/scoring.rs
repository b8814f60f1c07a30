//! Batch scoring and evaluations against the real Postgres and model: a scoring job fanned out
//! across two worker processes survives one of them being SIGKILLed mid-chunk, stores each
//! document's score once, equals what `serve` predicts, pages and exports; a re-run scores
//! only what is missing (new or changed documents); cancel stops it; an evaluation compares
//! two versions with metrics checked against figures recomputed here, and a training run's
//! promotion gate promotes or keeps the served version as the margin says.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::{json, Value};
use trainyard_jobs::JobKind;

/// Polls a scoring job or an evaluation (`path`) until it is done, failed or cancelled.
async fn wait_ended(app: &TestApp, path: &str, timeout: Duration) -> Value {
    let start = Instant::now();
    loop {
        let (_, j) = app.get(path).await;
        if matches!(j["status"].as_str(), Some("done" | "failed" | "cancelled"))
            || start.elapsed() > timeout
        {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_scoring(app: &TestApp, id: &str, timeout: Duration) -> Value {
    wait_ended(app, &format!("/api/v1/scoring-jobs/{id}"), timeout).await
}

async fn wait_evaluation(app: &TestApp, id: &str, timeout: Duration) -> Value {
    wait_ended(app, &format!("/api/v1/evaluations/{id}"), timeout).await
}

/// Trains a head on the spam dataset and returns the version number.
async fn train_head(app: &TestApp, dataset: &str, model: &str, extra: Value) -> i64 {
    let mut body = json!({"dataset_id": dataset, "model_name": model,
                          "hyperparameters": {"epochs": 30, "seed": 7}});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let (status, run) = app.post("/api/v1/training-runs", body).await;
    assert_eq!(status, 202, "{run}");
    let run = wait_training_run(app, run["id"].as_str().unwrap(), Duration::from_secs(240)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    run["model_version"].as_i64().unwrap()
}

/// The evaluation the latest run's gate asked for (asked right after the version registers).
async fn gate_evaluation(app: &TestApp) -> String {
    let start = Instant::now();
    loop {
        let (_, runs) = app.get("/api/v1/training-runs?limit=1").await;
        if let Some(id) = runs["items"][0]["gate_evaluation_id"].as_str() {
            return id.to_string();
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{runs}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every result of a scoring job, through the paginated endpoint.
async fn all_results(app: &TestApp, id: &str) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let (status, page) = app
            .get(&format!(
                "/api/v1/scoring-jobs/{id}/results?limit=100&offset={}",
                out.len()
            ))
            .await;
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().unwrap().clone();
        if items.is_empty() {
            return out;
        }
        out.extend(items);
    }
}

/// Ingests unlabelled documents of `source`, external ids `c0000`, `c0001`, … in text order.
async fn post_unlabelled(app: &TestApp, source: &str, texts: &[String]) {
    let docs: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"source": source, "external_id": format!("c{i:04}"), "text": t}))
        .collect();
    let (status, answer) = app
        .post("/api/v1/documents", json!({"documents": docs}))
        .await;
    assert_eq!(status, 200, "{answer}");
}

/// A dataset of spam documents (ready) and a promoted head version on it.
async fn spam_model(app: &TestApp, model: &str) -> String {
    import_spam_docs(app, "train", 240).await;
    let dataset = start_spam_dataset(app, "spam", "train").await;
    let d = app.wait_dataset(&dataset, Duration::from_secs(240)).await;
    assert_eq!(d["status"], "ready", "{d}");
    let v = train_head(app, &dataset, model, json!({"auto_promote": true})).await;
    assert_eq!(v, 1);
    dataset
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoring_fans_out_survives_a_kill_and_rescores_only_what_is_missing() {
    let db = fresh_db().await;
    let settings = Arc::new(test_settings(&db.url));
    let app = spawn_api(db.pool.clone(), settings).await;
    let trainer = spawn_inprocess_worker_on(
        &app,
        &[JobKind::DatasetBuild, JobKind::Embed, JobKind::Train],
        2,
    );
    spam_model(&app, "spam").await;
    let corpus = sentences(600, "corpus");
    post_unlabelled(&app, "corpus", &corpus).await;

    let env = [
        ("TRAINYARD_SCORING__CHUNK_SIZE", "50"),
        ("TRAINYARD_SCORING__THREADS", "1"),
    ];
    let mut victim = spawn_worker_process_with(&db.url, "score,evaluate", "victim", 1, &env);
    let _survivor = spawn_worker_process_with(&db.url, "score,evaluate", "survivor", 1, &env);
    let (status, job) = app
        .post(
            "/api/v1/scoring-jobs",
            json!({"model": "spam", "selection": {"sources": ["corpus"]}}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["version"], 1, "absent version = the served one");
    assert_eq!(job["threshold_source"], "stored");
    let id = job["id"].as_str().unwrap().to_string();

    // Kill the victim while it holds a chunk, once it has finished another.
    let started = Instant::now();
    loop {
        let (running, done): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE j.status = 'Running' AND j.lock_by LIKE 'victim-%'),
                    count(*) FILTER (WHERE j.status = 'Done' AND j.lock_by LIKE 'victim-%')
             FROM apalis.jobs j JOIN job_info i ON i.job_id = j.id
             WHERE j.job_type = 'score' AND i.progress_total > 1",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if running > 0 && done > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the victim never took a chunk"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    victim.0.kill().unwrap();
    let _ = victim.0.wait();

    let j = wait_scoring(&app, &id, Duration::from_secs(300)).await;
    assert_eq!(j["status"], "done", "{j}");
    assert_eq!(j["documents"], 600);
    assert_eq!(j["scored"], 600);
    assert_eq!(j["reused"], 0);
    assert_eq!(j["progress"]["chunks_total"], 12);
    assert_eq!(j["progress"]["chunks_done"], 12);
    assert_eq!(j["progress"]["texts_done"], 600);
    assert_eq!(j["progress"]["texts_total"], 600);
    // Both processes scored chunks; every score stored once.
    let by_worker: Vec<(String, i64)> = sqlx::query_as(
        "SELECT split_part(lock_by, '-', 1), count(*) FROM apalis.jobs
         WHERE job_type = 'score' AND status = 'Done' GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        by_worker.iter().any(|(w, _)| w == "victim")
            && by_worker.iter().any(|(w, _)| w == "survivor"),
        "chunks by worker: {by_worker:?}"
    );
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM document_scores WHERE model_name = 'spam' AND version = 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(stored, 600);

    // Pages in document order; scores equal what `serve` predicts for the same texts.
    let results = all_results(&app, &id).await;
    assert_eq!(results.len(), 600);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["position"], i as i64);
        assert_eq!(r["external_id"], format!("c{i:04}"));
    }
    let (_, page) = app
        .get(&format!(
            "/api/v1/scoring-jobs/{id}/results?limit=7&offset=595"
        ))
        .await;
    assert_eq!(
        (
            page["total"].as_i64(),
            page["items"].as_array().map(Vec::len)
        ),
        (Some(600), Some(5))
    );
    let sample: Vec<usize> = vec![0, 17, 250, 599];
    let texts: Vec<&String> = sample.iter().map(|&i| &corpus[i]).collect();
    let served = {
        let start = Instant::now();
        loop {
            let (status, b) = app
                .post("/api/v1/models/spam/batch", json!({"texts": texts}))
                .await;
            if status == 200 {
                break b;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "{b}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    for (k, &i) in sample.iter().enumerate() {
        let batch = served["results"][k]["predictions"]["spam"]
            .as_f64()
            .unwrap();
        let scored = results[i]["scores"]["spam"].as_f64().unwrap();
        assert!(
            (batch - scored).abs() < 1e-5,
            "document {i}: batch scoring {scored} vs serve {batch}"
        );
        assert_eq!(
            results[i]["positive_labels"], served["results"][k]["positive_labels"],
            "document {i}"
        );
    }

    // Exports: JSON Lines and Parquet, every document.
    let jsonl = app
        .client
        .get(format!(
            "{}/api/v1/scoring-jobs/{id}/export?format=jsonl",
            app.base
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 600);
    assert_eq!(lines[17]["scores"], results[17]["scores"]);
    let parquet = app
        .client
        .get(format!(
            "{}/api/v1/scoring-jobs/{id}/export?format=parquet",
            app.base
        ))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        use parquet::record::{ListAccessor, RowAccessor};
        let reader = SerializedFileReader::new(parquet).unwrap();
        assert_eq!(reader.metadata().file_metadata().num_rows(), 600);
        let row = reader.get_row_iter(None).unwrap().nth(17).unwrap().unwrap();
        assert_eq!(
            row.get_long(1).unwrap(),
            results[17]["document_id"].as_i64().unwrap()
        );
        let score = row.get_list(5).unwrap().get_float(0).unwrap() as f64;
        assert!((score - results[17]["scores"]["spam"].as_f64().unwrap()).abs() < 1e-6);
    }

    // The same request again scores nothing; a changed and ten new documents are all it scores.
    let (_, again) = app
        .post(
            "/api/v1/scoring-jobs",
            json!({"model": "spam", "selection": {"sources": ["corpus"]}, "threshold": 0.9}),
        )
        .await;
    let again = wait_scoring(
        &app,
        again["id"].as_str().unwrap(),
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(
        (
            again["status"].as_str(),
            again["scored"].as_i64(),
            again["reused"].as_i64()
        ),
        (Some("done"), Some(0), Some(600)),
        "{again}"
    );
    assert_eq!(again["threshold_source"], "request");
    let strict = all_results(&app, again["id"].as_str().unwrap()).await;
    for (a, b) in strict.iter().zip(&results) {
        assert_eq!(a["scores"], b["scores"]);
        let positive = a["scores"]["spam"].as_f64().unwrap() >= 0.9f32 as f64;
        assert_eq!(
            a["positive_labels"].as_array().unwrap().len(),
            usize::from(positive)
        );
    }
    let mut more: Vec<Value> = (0..10)
        .map(|i| json!({"source": "corpus", "external_id": format!("n{i}"), "text": format!("a new text number {i} about a free prize")}))
        .collect();
    more.push(json!({"source": "corpus", "external_id": "c0017", "text": "win a free prize now, click the link"}));
    assert_eq!(
        app.post("/api/v1/documents", json!({"documents": more}))
            .await
            .0,
        200
    );
    let (_, third) = app
        .post(
            "/api/v1/scoring-jobs",
            json!({"model": "spam", "version": 1, "selection": {"sources": ["corpus"]}}),
        )
        .await;
    let third = wait_scoring(
        &app,
        third["id"].as_str().unwrap(),
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(
        (
            third["scored"].as_i64(),
            third["reused"].as_i64(),
            third["documents"].as_i64()
        ),
        (Some(11), Some(599), Some(610)),
        "{third}"
    );
    let changed = all_results(&app, third["id"].as_str().unwrap()).await;
    let c17 = changed
        .iter()
        .find(|r| r["external_id"] == "c0017")
        .unwrap();
    assert!(
        c17["scores"]["spam"].as_f64().unwrap() > results[17]["scores"]["spam"].as_f64().unwrap(),
        "the changed text (now spam) was scored again: {c17} vs {}",
        results[17]
    );

    // The client verb: starts a job, follows it, writes the export; exit code 0.
    let out_file = std::env::temp_dir().join(format!("scores-{}.parquet", std::process::id()));
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_trainyard"))
        .args([
            "score",
            "--url",
            &app.base,
            "--model",
            "spam",
            "--sources",
            "corpus",
            "--output",
        ])
        .arg(&out_file)
        .output()
        .unwrap();
    let stdout: Value = serde_json::from_slice(&cli.stdout).unwrap_or(Value::Null);
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert_eq!(
        (
            stdout["status"].as_str(),
            stdout["documents"].as_i64(),
            stdout["scored"].as_i64()
        ),
        (Some("done"), Some(610), Some(0)),
        "{stdout}"
    );
    let bytes = std::fs::read(&out_file).unwrap();
    assert!(bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1"));
    let _ = std::fs::remove_file(&out_file);
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_trainyard"))
        .args([
            "score",
            "--url",
            &app.base,
            "--model",
            "nope",
            "--sources",
            "corpus",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(6), "refused by the API");
    drop(trainer);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_scoring_job_stops_and_a_new_one_scores_only_the_rest() {
    let db = fresh_db().await;
    let mut settings = test_settings(&db.url);
    settings.scoring.chunk_size = 40;
    settings.scoring.threads = 1;
    let app = spawn_api(db.pool.clone(), Arc::new(settings)).await;
    let _worker = spawn_inprocess_worker(&app, 1);
    spam_model(&app, "spam").await;
    let texts = sentences(400, "cancel");
    post_unlabelled(&app, "many", &texts).await;
    let body = json!({"model": "spam", "selection": {"sources": ["many"]}});
    let (_, job) = app.post("/api/v1/scoring-jobs", body.clone()).await;
    let id = job["id"].as_str().unwrap().to_string();
    let start = Instant::now();
    loop {
        let (_, j) = app.get(&format!("/api/v1/scoring-jobs/{id}")).await;
        if j["progress"]["chunks_done"].as_i64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "{j}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, cancelled) = app
        .post(&format!("/api/v1/scoring-jobs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    wait_queue_settled(&db.pool, Duration::from_secs(60)).await;
    let (_, j) = app.get(&format!("/api/v1/scoring-jobs/{id}")).await;
    assert_eq!(j["status"], "cancelled");
    let done = j["progress"]["chunks_done"].as_i64().unwrap();
    assert!((1..10).contains(&done), "cancel stopped the job: {j}");
    let (status, again) = app
        .post(&format!("/api/v1/scoring-jobs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 409, "{again}");
    let (status, export) = app.get(&format!("/api/v1/scoring-jobs/{id}/export")).await;
    assert_eq!(status, 409, "{export}");
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM document_scores WHERE model_name = 'spam'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    // Chunks that finished are stored (a chunk stopped mid-way stores nothing).
    assert_eq!(stored, done * 40, "{j}");
    let (_, rest) = app.post("/api/v1/scoring-jobs", body).await;
    let rest = wait_scoring(&app, rest["id"].as_str().unwrap(), Duration::from_secs(180)).await;
    assert_eq!(rest["status"], "done", "{rest}");
    assert_eq!(rest["reused"].as_i64(), Some(stored));
    assert_eq!(rest["scored"].as_i64(), Some(400 - stored));
    db.drop_db().await;
}

/// F1 of one label at `threshold` over (score, target) pairs, computed here independently.
fn f1(pairs: &[(f64, bool)], threshold: f64) -> f64 {
    let tp = pairs.iter().filter(|(s, t)| *t && *s >= threshold).count() as f64;
    let fp = pairs.iter().filter(|(s, t)| !*t && *s >= threshold).count() as f64;
    let fn_ = pairs.iter().filter(|(s, t)| *t && *s < threshold).count() as f64;
    if tp == 0.0 {
        0.0
    } else {
        2.0 * tp / (2.0 * tp + fp + fn_)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluations_compare_versions_and_gate_promotion() {
    let db = fresh_db().await;
    let mut settings = test_settings(&db.url);
    settings.scoring.chunk_size = 25;
    settings.scoring.threads = 1;
    let app = spawn_api(db.pool.clone(), Arc::new(settings)).await;
    let worker = spawn_inprocess_worker(&app, 2);
    let dataset = spam_model(&app, "spam").await;
    // v2 learns the opposite labels (spam texts, every annotation flipped), so it decides
    // differently on many records and scores far worse.
    let (docs, anns) = spam_docs("flip", 240);
    let mut anns = anns;
    for a in anns["annotations"].as_array_mut().unwrap() {
        let v = a["labels"]["spam"].as_bool().unwrap();
        a["labels"]["spam"] = json!(!v);
    }
    assert_eq!(app.post("/api/v1/documents", docs).await.0, 200);
    assert_eq!(app.post("/api/v1/annotations", anns).await.0, 200);
    let flipped = start_spam_dataset(&app, "flipped", "flip").await;
    assert_eq!(
        app.wait_dataset(&flipped, Duration::from_secs(240)).await["status"],
        "ready"
    );
    let v2 = train_head(&app, &flipped, "spam", json!({})).await;
    assert_eq!(v2, 2);
    // A second labelled source to evaluate on, that no version trained on.
    import_spam_docs(&app, "holdout", 120).await;
    let (_, hd) = app
        .post(
            "/api/v1/datasets",
            json!({"name": "holdout", "selection": {"sources": ["holdout"]},
                   "label_schema": {"type": "binary", "labels": ["spam"]},
                   "splits": {"train": 0.5, "validation": 0.0, "test": 0.5}}),
        )
        .await;
    let holdout = hd["id"].as_str().unwrap().to_string();
    assert_eq!(
        app.wait_dataset(&holdout, Duration::from_secs(120)).await["status"],
        "ready"
    );

    // Bad requests are 4xx that say what is wrong.
    for (body, code, param) in [
        (
            json!({"model": "nope", "versions": [1], "dataset_id": holdout}),
            422,
            "model",
        ),
        (
            json!({"model": "spam", "versions": [1, 9], "dataset_id": holdout}),
            422,
            "versions",
        ),
        (
            json!({"model": "spam", "versions": [1, 1], "dataset_id": holdout}),
            422,
            "versions",
        ),
        (
            json!({"model": "spam", "versions": [], "dataset_id": holdout}),
            400,
            "versions",
        ),
        (
            json!({"model": "spam", "versions": [1], "dataset_id": uuid::Uuid::nil()}),
            422,
            "dataset_id",
        ),
    ] {
        let (status, e) = app.post("/api/v1/evaluations", body.clone()).await;
        assert_eq!(status, code, "{body} → {e}");
        assert_eq!(e["error"]["param"], param, "{e}");
    }

    let (status, ev) = app
        .post(
            "/api/v1/evaluations",
            json!({"model": "spam", "versions": [2, 1], "dataset_id": holdout, "split": "test"}),
        )
        .await;
    assert_eq!(status, 202, "{ev}");
    let ev = wait_evaluation(&app, ev["id"].as_str().unwrap(), Duration::from_secs(240)).await;
    assert_eq!(ev["status"], "done", "{ev}");
    assert_eq!(ev["versions"], json!([1, 2]));
    let jobs = ev["scoring_jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2);

    // Recompute every figure here from the scores and the dataset's labels.
    let (_, records) = app
        .get(&format!(
            "/api/v1/datasets/{holdout}/records?split=test&limit=1000"
        ))
        .await;
    let truth: BTreeMap<i64, bool> = records["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["document_id"].as_i64().unwrap(), r["labels"]["spam"] == 1))
        .collect();
    let mut decisions: Vec<BTreeMap<i64, bool>> = Vec::new();
    for (k, version) in [1, 2].iter().enumerate() {
        let job = jobs[k].as_str().unwrap();
        let (_, sj) = app.get(&format!("/api/v1/scoring-jobs/{job}")).await;
        assert_eq!(sj["version"], *version);
        assert_eq!(sj["evaluation_id"], ev["id"]);
        let results = all_results(&app, job).await;
        assert_eq!(results.len(), truth.len());
        let pairs: Vec<(f64, bool)> = results
            .iter()
            .map(|r| {
                (
                    r["scores"]["spam"].as_f64().unwrap(),
                    truth[&r["document_id"].as_i64().unwrap()],
                )
            })
            .collect();
        let side = &ev["results"]["versions"][k];
        assert_eq!(side["version"], *version);
        let stored = &side["at_stored_thresholds"];
        let t = stored["thresholds"]["spam"].as_f64().unwrap();
        let label = &stored["per_label"][0];
        assert!(
            (label["f1"].as_f64().unwrap() - f1(&pairs, t)).abs() < 1e-9,
            "{side}"
        );
        assert_eq!(
            label["support"].as_u64().unwrap() as usize,
            pairs.iter().filter(|p| p.1).count()
        );
        // ROC-AUC by counting ordered pairs.
        let pos: Vec<f64> = pairs.iter().filter(|p| p.1).map(|p| p.0).collect();
        let neg: Vec<f64> = pairs.iter().filter(|p| !p.1).map(|p| p.0).collect();
        let mut wins = 0.0;
        for p in &pos {
            for n in &neg {
                wins += if p > n {
                    1.0
                } else if p == n {
                    0.5
                } else {
                    0.0
                };
            }
        }
        let auc = wins / (pos.len() * neg.len()) as f64;
        assert!(
            (label["roc_auc"].as_f64().unwrap() - auc).abs() < 1e-9,
            "{side}"
        );
        // The tuned threshold's F1 is the best over every candidate.
        let tuned = &side["at_tuned_thresholds"];
        let best = pairs.iter().map(|p| f1(&pairs, p.0)).fold(0.0f64, f64::max);
        assert!(
            (tuned["per_label"][0]["f1"].as_f64().unwrap() - best).abs() < 1e-6,
            "{tuned}"
        );
        assert!(
            tuned["macro_f1"].as_f64().unwrap() >= stored["macro_f1"].as_f64().unwrap() - 1e-12
        );
        decisions.push(
            results
                .iter()
                .map(|r| {
                    (
                        r["document_id"].as_i64().unwrap(),
                        r["positive_labels"] == json!(["spam"]),
                    )
                })
                .collect(),
        );
    }
    let differ: Vec<i64> = truth
        .keys()
        .filter(|d| decisions[0][d] != decisions[1][d])
        .copied()
        .collect();
    assert_eq!(ev["disagreements"].as_u64().unwrap() as usize, differ.len());
    assert!(
        differ.len() * 4 > truth.len(),
        "the flipped version decides differently on many records: {} of {}; {}",
        differ.len(),
        truth.len(),
        ev["results"]
    );
    let (_, page) = app
        .get(&format!(
            "/api/v1/evaluations/{}/disagreements?limit=1000",
            ev["id"].as_str().unwrap()
        ))
        .await;
    let mut listed: Vec<i64> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["document_id"].as_i64().unwrap())
        .collect();
    listed.sort_unstable();
    assert_eq!(listed, differ);
    assert!(page["items"][0]["predictions"]["1"]["scores"]["spam"].is_number());

    // Gated auto_promote: v1 is served; a copy of v1's recipe cannot gain a full point of F1,
    // so it is not promoted; with the flipped v2 served, the same recipe beats it by the
    // margin and is.
    let gate = json!({"dataset_id": holdout, "split": "test", "margin": 1.0});
    let v3 = train_head(
        &app,
        &dataset,
        "spam",
        json!({"auto_promote": true, "promotion_gate": gate}),
    )
    .await;
    let gate_eval = gate_evaluation(&app).await;
    let ge = wait_evaluation(&app, &gate_eval, Duration::from_secs(240)).await;
    assert_eq!(ge["status"], "done", "{ge}");
    assert_eq!(ge["promotion"]["candidate"], v3);
    assert_eq!(ge["promotion"]["against"], 1);
    assert_eq!(ge["promotion"]["decision"], "not_promoted", "{ge}");
    let (_, models) = app.get("/api/v1/models").await;
    assert_eq!(models[0]["served_version"], 1, "{models}");

    let (status, _) = app
        .post("/api/v1/models/spam/versions/2/promote", json!({}))
        .await;
    assert_eq!(status, 200);
    let gate = json!({"dataset_id": holdout, "margin": 0.5});
    let v4 = train_head(
        &app,
        &dataset,
        "spam",
        json!({"auto_promote": true, "promotion_gate": gate}),
    )
    .await;
    let gate_eval = gate_evaluation(&app).await;
    let ge = wait_evaluation(&app, &gate_eval, Duration::from_secs(240)).await;
    assert_eq!(ge["promotion"]["decision"], "promoted", "{ge}");
    assert!(
        ge["promotion"]["reason"]
            .as_str()
            .unwrap()
            .contains("macro-F1"),
        "{ge}"
    );
    let (_, models) = app.get("/api/v1/models").await;
    assert_eq!(models[0]["served_version"], v4, "{models}");
    let (status, e) = app
        .post(
            "/api/v1/training-runs",
            json!({"dataset_id": dataset, "model_name": "spam", "promotion_gate": {"dataset_id": holdout}}),
        )
        .await;
    assert_eq!(
        (status, e["error"]["param"].as_str()),
        (422, Some("promotion_gate")),
        "{e}"
    );

    // Cancelling one scoring job of an evaluation cancels the evaluation and its other job
    // (nothing runs them here: the worker is stopped first).
    drop(worker);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, ev) = app
        .post(
            "/api/v1/evaluations",
            json!({"model": "spam", "versions": [3, 4], "dataset_id": holdout, "split": "train"}),
        )
        .await;
    assert_eq!(status, 202, "{ev}");
    let jobs: Vec<String> = ev["scoring_jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j.as_str().unwrap().to_string())
        .collect();
    let (status, first) = app
        .post(
            &format!("/api/v1/scoring-jobs/{}/cancel", jobs[0]),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, first["status"].as_str()),
        (200, Some("cancelled")),
        "{first}"
    );
    let evaluation = ev["id"].as_str().unwrap();
    let (_, e) = app.get(&format!("/api/v1/evaluations/{evaluation}")).await;
    assert_eq!(e["status"], "cancelled", "{e}");
    let (_, second) = app.get(&format!("/api/v1/scoring-jobs/{}", jobs[1])).await;
    assert_eq!(second["status"], "cancelled", "{second}");
    let plan = second["plan_job_id"].as_str().unwrap();
    let (_, plan_job) = app.get(&format!("/api/v1/jobs/{plan}")).await;
    assert_eq!(plan_job["status"], "cancelled", "{plan_job}");
    let (status, retried) = app
        .post(&format!("/api/v1/jobs/{plan}/retry"), json!({}))
        .await;
    assert_eq!(
        status, 409,
        "a cancelled scoring job is not resumed: {retried}"
    );
    let (status, _) = app
        .post(
            &format!("/api/v1/evaluations/{evaluation}/cancel"),
            json!({}),
        )
        .await;
    assert_eq!(status, 409);
    db.drop_db().await;
}
