//! The web app at `/ui` in real headless Chromium (tests/browser/webapp.mjs, playwright-core
//! and axe-core from npm), against a server with tokens required, the real MiniLM and
//! Postgres: one annotator labels 20 documents by keyboard alone and the annotations, their
//! name and guideline version are in Postgres; two annotators with `overlap = 2` never see the
//! same document at once and each document leaves the queue after both; a dataset built
//! afterwards uses the new votes; `read` cannot label, `submit` cannot promote, `admin`
//! promotes from the Models page and `/predict` serves the new version; the Runs page shows
//! a run's curve growing while it trains; every page's figures equal the API's; no request
//! leaves 127.0.0.1; axe-core finds no serious or critical violation. Screenshots go to
//! `$CARGO_TARGET_DIR/test-output/webapp/`.
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use serde_json::{json, Value};
use trainyard::auth::Scope;

async fn token(app: &TestApp, name: &str, scopes: &[Scope]) -> String {
    trainyard::auth::create(&app.state.pool, name, scopes, None)
        .await
        .unwrap()
        .token
}

fn with_token(app: &TestApp, token: &str) -> TestApp {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    TestApp {
        base: app.base.clone(),
        state: app.state.clone(),
        client: reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap(),
    }
}

async fn train(app: &TestApp, dataset: &str, promote: bool, mode: &str, hyper: Value) -> Value {
    let (status, run) = app
        .post(
            "/api/v1/training-runs",
            json!({"dataset_id": dataset, "model_name": "spam", "auto_promote": promote,
                   "mode": mode, "hyperparameters": hyper}),
        )
        .await;
    assert_eq!(status, 202, "{run}");
    run
}

/// Runs the browser script with `config`; its one JSON line.
async fn browse(config: Value) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/webapp.mjs");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .arg(&path)
            .output()
            .expect("node")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| {
        panic!(
            "no JSON from the browser script ({e}): {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_app_in_headless_chromium() {
    let db = fresh_db().await;
    let mut settings = test_settings(&db.url);
    settings.auth.mode = trainyard::config::AuthMode::Required;
    let plain = spawn_api(db.pool.clone(), Arc::new(settings)).await;
    let _worker = spawn_inprocess_worker(&plain, 2);
    let admin_token = token(&plain, "lead", &[Scope::Admin]).await;
    let app = with_token(&plain, &admin_token);
    let submit = token(&plain, "ann-one", &[Scope::Submit]).await;
    let submit2 = token(&plain, "ann-two", &[Scope::Submit]).await;
    let read = token(&plain, "viewer", &[Scope::Read]).await;

    // The served spam model (v1) trained on `inbox`, v2 waiting for promotion; `fresh` (one
    // annotator) and `team` (two, overlap 2) scored by v1.
    import_spam_docs(&app, "inbox", 90).await;
    for (source, n) in [("fresh", 40), ("team", 10)] {
        let (docs, _) = spam_docs(source, n);
        assert_eq!(app.post("/api/v1/documents", docs).await.0, 200);
    }
    let dataset = start_spam_dataset(&app, "inbox", "inbox").await;
    assert_eq!(
        app.wait_dataset(&dataset, Duration::from_secs(300)).await["status"],
        "ready"
    );
    for (promote, seed) in [(true, 1), (false, 2)] {
        let run = train(
            &app,
            &dataset,
            promote,
            "head",
            json!({"epochs": 20, "seed": seed}),
        )
        .await;
        let run =
            wait_training_run(&app, run["id"].as_str().unwrap(), Duration::from_secs(300)).await;
        assert_eq!(run["status"], "succeeded", "{run}");
    }
    wait_loaded(&app, "spam", 1).await;
    score_source(&app, "spam", "fresh", Some(1)).await;
    score_source(&app, "spam", "team", Some(1)).await;
    // An evaluation of both versions, for the Models page.
    let (s, ev) = app
        .post(
            "/api/v1/evaluations",
            json!({"model": "spam", "versions": [1, 2], "dataset_id": dataset, "split": "test"}),
        )
        .await;
    assert_eq!(s, 202, "{ev}");
    let path = format!("/api/v1/evaluations/{}", ev["id"].as_str().unwrap());
    let started = std::time::Instant::now();
    while app.get(&path).await.1["status"] != "done" {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "{}",
            app.get(&path).await.1
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (s, b) = app
        .post("/api/v1/sources/team/settings", json!({"overlap": 2}))
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, g) = app
        .post(
            "/api/v1/guidelines",
            json!({"label": "spam", "text": "Spam: unsolicited offers, prizes, pills and phishing. Not spam: anything a person wrote to you."}),
        )
        .await;
    assert_eq!(s, 201, "{g}");

    let shots = std::path::PathBuf::from(
        std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()),
    )
    .join("test-output/webapp");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let config = json!({
        "base": plain.base, "shots": shots,
        "tokens": {"admin": admin_token, "submit": submit, "submit2": submit2, "read": read},
        "model": "spam", "strategy": "uncertain", "source_one": "fresh", "source_two": "team",
        "count_one": 20, "promote_version": 2, "run_id": null, "dataset_id": dataset,
    });
    let text = json!({"text": "win a free prize now, click the link"});
    let (s, before) = app.post("/api/v1/models/spam/predict", text.clone()).await;
    assert_eq!(s, 200, "{before}");
    let v = browse(config.clone()).await;
    assert!(v["error"].is_null(), "browser script failed: {v}");
    assert_eq!(v["outside"], json!([]), "requests left 127.0.0.1: {v}");

    // One annotator, keyboard only: 20 decisions, under the token's name and guideline 1.
    let decided = v["one"]["decided"].as_array().unwrap();
    let final_labels: BTreeMap<i64, bool> = decided
        .iter()
        .map(|d| {
            (
                d["document_id"].as_i64().unwrap(),
                d["labels"]["spam"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(final_labels.len(), 20, "{}", v["one"]);
    assert!(v["one"]["undone"].as_i64().is_some(), "{}", v["one"]);
    assert_eq!(v["one"]["key_help_visible"], true, "{}", v["one"]);
    let stored: Vec<(i64, String, bool, Option<i32>)> = sqlx::query_as(
        "SELECT DISTINCT ON (a.document_id) a.document_id, a.annotator, a.value, a.guideline_version
         FROM annotations a JOIN documents d ON d.id = a.document_id
         WHERE d.source = 'fresh' ORDER BY a.document_id, a.annotated_at DESC",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let stored_map: BTreeMap<i64, bool> = stored.iter().map(|r| (r.0, r.2)).collect();
    assert_eq!(
        stored_map, final_labels,
        "Postgres holds exactly the decisions made"
    );
    assert!(
        stored.iter().all(|r| r.1 == "ann-one" && r.3 == Some(1)),
        "{stored:?}"
    );

    // Two annotators, overlap 2.
    let two = &v["two"];
    assert_eq!(two["same_at_once"], json!([]), "{two}");
    let team: BTreeSet<i64> = sqlx::query_scalar("SELECT id FROM documents WHERE source = 'team'")
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    for who in ["a", "b"] {
        let ids: BTreeSet<i64> = two[who]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_i64().unwrap())
            .collect();
        assert_eq!(ids, team, "{who} decided every team document once: {two}");
    }
    let per_document: Vec<(String, i64)> = sqlx::query_as(
        "SELECT string_agg(DISTINCT a.annotator, ',' ORDER BY a.annotator), d.id
         FROM annotations a JOIN documents d ON d.id = a.document_id
         WHERE d.source = 'team' GROUP BY d.id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(per_document.len(), team.len());
    assert!(
        per_document.iter().all(|(who, _)| who == "ann-one,ann-two"),
        "{per_document:?}"
    );

    // Scopes.
    assert_eq!(v["read"]["can_label"], false, "{}", v["read"]);
    assert_eq!(v["read"]["next_status"], 403, "{}", v["read"]);
    assert_eq!(
        v["submit_promote"]["promote_buttons"], 0,
        "{}",
        v["submit_promote"]
    );
    assert_eq!(
        v["submit_promote"]["promote_status"], 403,
        "{}",
        v["submit_promote"]
    );
    assert_eq!(
        v["admin_promote"]["served_after"], 2,
        "{}",
        v["admin_promote"]
    );
    wait_loaded(&app, "spam", 2).await;
    let (s, after) = app.post("/api/v1/models/spam/predict", text).await;
    assert_eq!(s, 200, "{after}");
    assert_ne!(
        after["predictions"], before["predictions"],
        "/predict serves version 2 (another seed)"
    );
    let (_, models) = app.get("/api/v1/models").await;
    assert_eq!(models[0]["loaded_version"], 2, "{models}");

    // Figures, accessibility, screenshots.
    assert!(
        v["figures"]["checked"].as_u64().unwrap_or(0) >= 10,
        "{}",
        v["figures"]
    );
    assert_eq!(v["figures"]["mismatches"], json!([]), "{}", v["figures"]);
    assert!(
        v["axe"]["pages_checked"].as_u64().unwrap_or(0) >= 7,
        "{}",
        v["axe"]
    );
    assert_eq!(v["axe"]["serious"], json!([]), "{}", v["axe"]);
    for page in [
        "signin",
        "label",
        "agreement",
        "datasets",
        "runs",
        "models",
        "queues",
    ] {
        assert!(
            shots.join(format!("{page}.png")).exists(),
            "no screenshot of {page}: {v}"
        );
    }

    // A dataset built now uses the new votes: its records are the decided documents with
    // the decided labels.
    let (s, d) = app
        .post(
            "/api/v1/datasets",
            json!({"name": "fresh", "selection": {"sources": ["fresh"]},
                   "label_schema": {"type": "binary", "labels": ["spam"]}}),
        )
        .await;
    assert_eq!(s, 200, "{d}");
    let id = d["id"].as_str().unwrap();
    assert_eq!(
        app.wait_dataset(id, Duration::from_secs(300)).await["status"],
        "ready"
    );
    let (_, records) = app
        .get(&format!("/api/v1/datasets/{id}/records?limit=1000"))
        .await;
    let ids: BTreeMap<String, i64> =
        sqlx::query_as("SELECT external_id, id FROM documents WHERE source = 'fresh'")
            .fetch_all(&db.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let built: BTreeMap<i64, bool> = records["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{records}"))
        .iter()
        .map(|r| {
            let external = r["external_id"].as_str().unwrap();
            (ids[external], r["labels"]["spam"] == 1)
        })
        .collect();
    assert_eq!(
        built, final_labels,
        "the rebuilt dataset is the decided votes"
    );

    // The Runs page while a finetune trains: the epochs it shows grow.
    let run = train(
        &app,
        &dataset,
        false,
        "finetune",
        json!({"epochs": 4, "patience": 0, "seed": 5, "max_tokens": 32}),
    )
    .await;
    let mut config = config;
    config["run_id"] = run["id"].clone();
    config["only"] = json!(["runs"]);
    let v = browse(config).await;
    assert!(v["error"].is_null(), "browser script failed: {v}");
    let seen: Vec<i64> = v["runs"]["epochs_seen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_i64().unwrap())
        .collect();
    assert!(
        seen.len() >= 2 && seen.windows(2).all(|w| w[0] < w[1]),
        "the curve grew while training: {v}"
    );
    db.drop_db().await;
}
