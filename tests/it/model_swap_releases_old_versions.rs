//! A promotion releases the version it replaces: after several promotions in one process only
//! the served version's `LoadedModel` is alive and only its encoder threads run; every other
//! version's threads have ended, dropping its tensors and tokenizer. Checked with weak
//! references and the encoders' thread watches (not with RSS, which is noisy), against a real
//! Postgres and the real MiniLM (issue 9: `serve`'s memory under repeated promotions).

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::json;
use trainyard::inference::LoadedModel;
use trainyard::ml::text_encoder::ThreadWatch;

const MODEL: &str = "swap";

async fn train_head(app: &TestApp, dataset: &str, seed: u64) -> i64 {
    let (s, r) = app
        .post(
            "/api/v1/training-runs",
            json!({"dataset_id": dataset, "model_name": MODEL, "mode": "head",
                   "hyperparameters": {"epochs": 2, "patience": 0, "seed": seed}}),
        )
        .await;
    assert_eq!(s, 202, "{r}");
    let run = wait_training_run(app, r["id"].as_str().unwrap(), Duration::from_secs(300)).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    run["model_version"].as_i64().unwrap()
}

/// Promotes `version` (never the one served now) and waits until this process serves it.
async fn promote_and_wait(app: &TestApp, version: i64) -> Arc<LoadedModel> {
    let (s, p) = app
        .post(
            &format!("/api/v1/models/{MODEL}/versions/{version}/promote"),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{p}");
    let start = Instant::now();
    loop {
        if let Some(model) = app.state.models.get(MODEL) {
            if i64::from(model.version) == version {
                return model;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "version {version} never loaded: {:?}",
            app.state.models.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotions_release_the_versions_they_replace() {
    let db = fresh_db().await;
    let mut settings = test_settings(&db.url);
    settings.inference.threads = 2;
    let app = spawn_api(db.pool.clone(), Arc::new(settings)).await;
    let _worker = spawn_inprocess_worker(&app, 2);
    import_spam_docs(&app, "swap", 60).await;
    let dataset = start_spam_dataset(&app, "swap", "swap").await;
    let d = app.wait_dataset(&dataset, Duration::from_secs(240)).await;
    assert_eq!(d["status"], "ready", "{d}");
    let v1 = train_head(&app, &dataset, 1).await;
    let v2 = train_head(&app, &dataset, 2).await;

    // Five swaps, alternating between the two versions: each loads a fresh copy.
    let mut loaded: Vec<(i64, Weak<LoadedModel>, ThreadWatch)> = Vec::new();
    for version in [v1, v2, v1, v2, v1] {
        let model = promote_and_wait(&app, version).await;
        let watch = model.encoder_threads();
        // Two replicas and the coordinator.
        assert_eq!(watch.running(), 3, "v{version} runs 3 encoder threads");
        loaded.push((version, Arc::downgrade(&model), watch));
    }

    let (old, current) = loaded.split_at(loaded.len() - 1);
    let start = Instant::now();
    loop {
        let left: Vec<(i64, bool, usize)> = old
            .iter()
            .map(|(v, weak, watch)| (*v, weak.upgrade().is_some(), watch.running()))
            .filter(|(_, alive, threads)| *alive || *threads > 0)
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "swapped-out versions still alive (version, model alive, encoder threads): {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (v, weak, watch) = &current[0];
    assert!(weak.upgrade().is_some(), "v{v} is served");
    assert_eq!(watch.running(), 3, "the served version keeps its threads");
    let (s, r) = app
        .post(
            &format!("/api/v1/models/{MODEL}/predict"),
            json!({"text": "win a free prize now"}),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    db.drop_db().await;
}
