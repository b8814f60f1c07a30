//! Model export against the real Postgres, the real MiniLM and Python: a finetuned version's
//! exported folder loads in Hugging Face `transformers` and reproduces trainyard's scores
//! within 1e-4 on 50 texts (tests/python/export_roundtrip.py); a head-only version exports its
//! head and names its embedding model; `trainyard export` unpacks it; bad requests are 4xx. A
//! finetune from each family's random base (RoBERTa, XLM-RoBERTa, DistilBERT, MPNet, written by
//! `transformers`) exports a folder that `AutoModel` loads with the family's class and that
//! reproduces the served scores.
use crate::support::families;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use families::python;
use serde_json::{json, Value};

/// 50 texts: spam and ham like the training data, and unlike it (long, unicode, one letter).
fn probe_texts() -> Vec<String> {
    let mut texts: Vec<String> = spam_docs("probe", 40).0["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["text"].as_str().unwrap().to_string())
        .collect();
    texts.extend([
        "a".to_string(),
        "Café naïve résumé — Zürich, São Paulo".to_string(),
        "机器学习正在改变世界。".to_string(),
        "WIN $1,000,000 NOW!!! Click here: http://example.com/claim?id=42".to_string(),
        "   spaces\tand\ttabs\n".to_string(),
        "meeting moved to thursday, agenda attached ".repeat(40),
        "I love pizza 🍕 and rockets 🚀".to_string(),
        "urgent: verify your bank account".to_string(),
        "See you at lunch.".to_string(),
        "cheap pills cheap pills cheap pills".to_string(),
    ]);
    assert_eq!(texts.len(), 50);
    texts
}

/// Runs the round-trip script on `folder` with `input`; returns its output.
fn python_scores(folder: &std::path::Path, input: Value) -> Value {
    let dir = folder.parent().unwrap();
    let input_path = dir.join("input.json");
    let output_path = dir.join("output.json");
    std::fs::write(&input_path, input.to_string()).unwrap();
    let out = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/export_roundtrip.py"
        ))
        .arg(folder)
        .arg(&input_path)
        .arg(&output_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(&output_path).unwrap()).unwrap()
}

fn max_diff(served: &Value, python: &Value, label: &str) -> f64 {
    let results = served["results"].as_array().unwrap();
    let rows = python["scores"].as_array().unwrap();
    assert_eq!(results.len(), rows.len());
    let k = python["labels"]
        .as_array()
        .unwrap()
        .iter()
        .position(|l| l == label)
        .unwrap();
    results
        .iter()
        .zip(rows)
        .map(|(r, p)| (r["predictions"][label].as_f64().unwrap() - p[k].as_f64().unwrap()).abs())
        .fold(0.0, f64::max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_versions_reproduce_trainyard_scores_in_python() {
    let db = fresh_db().await;
    let settings = Arc::new(test_settings(&db.url));
    let app = spawn_api(db.pool.clone(), settings).await;
    let _worker = spawn_inprocess_worker(&app, 2);
    import_spam_docs(&app, "mail", 160).await;
    let dataset = start_spam_dataset(&app, "export", "mail").await;
    let d = app.wait_dataset(&dataset, Duration::from_secs(300)).await;
    assert_eq!(d["status"], "ready", "{d}");

    // A finetuned version (short texts, one epoch: the point is the round trip, not F1),
    // trained in bf16 autocast: what is stored, served and exported is fp32.
    let run = train_to_success(
        &app,
        json!({"dataset_id": dataset, "model_name": "ft-export", "mode": "finetune",
               "auto_promote": true,
               "hyperparameters": {"epochs": 1, "batch_size": 16, "max_tokens": 64,
                                    "learning_rate": 0.003, "encoder_learning_rate": 0.0001,
                                    "hidden_size": 32, "seed": 5, "precision": "bf16"}}),
    )
    .await;
    assert_eq!(run["base_model"], "all-MiniLM-L6-v2", "{run}");
    assert_eq!(run["hyperparameters"]["precision"], "bf16", "{run}");
    wait_loaded(&app, "ft-export", 1).await;
    let texts = probe_texts();
    let (status, served) = app
        .post("/api/v1/models/ft-export/batch", json!({"texts": texts}))
        .await;
    assert_eq!(status, 200, "{served}");

    // The API's tar: one folder, the files transformers needs, the head, the manifest.
    let response = app
        .client
        .get(format!(
            "{}/api/v1/models/ft-export/versions/1/export",
            app.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/x-tar"
    );
    assert_eq!(
        response.headers()["content-disposition"].to_str().unwrap(),
        "attachment; filename=\"ft-export-v1.tar\""
    );
    let files = untar(&response.bytes().await.unwrap());
    for name in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "head.safetensors",
        "trainyard.json",
        "README.md",
        "modules.json",
        "1_Pooling/config.json",
    ] {
        assert!(
            files.contains_key(&format!("ft-export-v1/{name}")),
            "{name} missing: {:?}",
            files.keys().collect::<Vec<_>>()
        );
    }
    let manifest: Value = serde_json::from_slice(&files["ft-export-v1/trainyard.json"]).unwrap();
    assert_eq!(manifest["labels"], json!(["spam"]));
    assert_eq!(manifest["mode"], "finetune");
    assert_eq!(
        manifest["pooling"],
        json!({"mode": "mean", "normalize": true})
    );
    assert_eq!(manifest["truncation"]["max_tokens"], 64);
    assert_eq!(manifest["activation"], "sigmoid");
    let (_, version) = app.get("/api/v1/models/ft-export/versions/1").await;
    assert_eq!(manifest["thresholds"], version["thresholds"], "{version}");

    // `trainyard export` unpacks the same folder; Python scores the 50 texts from it.
    let out_dir = std::env::temp_dir().join(format!("ty-export-{}", uuid::Uuid::new_v4().simple()));
    let cli = Command::new(env!("CARGO_BIN_EXE_trainyard"))
        .args([
            "export",
            "--model",
            "ft-export",
            "--json",
            "--url",
            &app.base,
            "--dir",
        ])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "trainyard export: {}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let printed: Value = serde_json::from_slice(&cli.stdout).unwrap();
    assert_eq!(printed["version"], 1, "{printed}");
    let folder = out_dir.join("ft-export-v1");
    assert_eq!(
        std::fs::read(folder.join("model.safetensors")).unwrap(),
        files["ft-export-v1/model.safetensors"],
        "the CLI unpacks the API's tar"
    );
    let python = python_scores(&folder, json!({"texts": texts}));
    let diff = max_diff(&served, &python, "spam");
    let st_diff = python["sentence_transformers_max_abs_diff"]
        .as_f64()
        .unwrap();
    eprintln!(
        "finetuned export: max |trainyard - transformers| over 50 texts = {diff:e}; \
         sentence-transformers pooled vs hand pooled = {st_diff:e}"
    );
    assert!(diff < 1e-4, "transformers reproduces the scores: {diff}");
    assert!(
        st_diff < 1e-5,
        "SentenceTransformer(folder) pools the same way: {st_diff}"
    );
    for (k, row) in served["results"].as_array().unwrap().iter().enumerate() {
        let differs_at_threshold = (row["predictions"]["spam"].as_f64().unwrap()
            - version["thresholds"][0].as_f64().unwrap())
        .abs()
            < 1e-4;
        if !differs_at_threshold {
            assert_eq!(
                row["positive_labels"], python["positive_labels"][k],
                "text {k}"
            );
        }
    }
    // A second export into the same directory would overwrite: refused with the usage code.
    let again = Command::new(env!("CARGO_BIN_EXE_trainyard"))
        .args([
            "export",
            "--model",
            "ft-export",
            "--version",
            "1",
            "--url",
            &app.base,
            "--dir",
        ])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert_eq!(
        again.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let _ = std::fs::remove_dir_all(&out_dir);

    // A head-only version: its head and the name of its embedding model, no encoder.
    train_to_success(
        &app,
        json!({"dataset_id": dataset, "model_name": "head-export", "auto_promote": true,
               "hyperparameters": {"epochs": 20, "seed": 5}}),
    )
    .await;
    wait_loaded(&app, "head-export", 1).await;
    let (_, served) = app
        .post("/api/v1/models/head-export/batch", json!({"texts": texts}))
        .await;
    let tar = app
        .client
        .get(format!(
            "{}/api/v1/models/head-export/versions/1/export",
            app.base
        ))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let files = untar(&tar);
    assert!(!files.contains_key("head-export-v1/model.safetensors"));
    let manifest: Value = serde_json::from_slice(&files["head-export-v1/trainyard.json"]).unwrap();
    assert_eq!(manifest["mode"], "head");
    assert_eq!(manifest["encoder"], Value::Null);
    assert_eq!(manifest["embedding_model"]["name"], "all-MiniLM-L6-v2");
    assert_eq!(manifest["embedding_model"]["dimensions"], 384);
    // Unpacked by hand (tar crate), scored in Python on the embedding model's vectors from
    // trainyard's OpenAI-compatible endpoint.
    let dir = std::env::temp_dir().join(format!("ty-head-{}", uuid::Uuid::new_v4().simple()));
    tar::Archive::new(tar.as_ref()).unpack(&dir).unwrap();
    let (_, embedded) = app
        .post(
            "/v1/embeddings",
            json!({"model": "all-MiniLM-L6-v2", "input": texts}),
        )
        .await;
    let vectors: Vec<Value> = embedded["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["embedding"].clone())
        .collect();
    let python = python_scores(&dir.join("head-export-v1"), json!({"embeddings": vectors}));
    let diff = max_diff(&served, &python, "spam");
    eprintln!("head export: max |trainyard - torch head on /v1/embeddings| = {diff:e}");
    assert!(diff < 1e-4, "{diff}");
    let _ = std::fs::remove_dir_all(&dir);

    // Bad requests.
    let (s, e) = app.get("/api/v1/models/nope/versions/1/export").await;
    assert_eq!(s, 404, "{e}");
    let (s, e) = app.get("/api/v1/models/ft-export/versions/9/export").await;
    assert_eq!(s, 404, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no version 9"),
        "{e}"
    );
    let (s, e) = app.get("/api/v1/models/ft-export/versions/0/export").await;
    assert!(s == 400 || s == 422, "{s} {e}");
    let missing = Command::new(env!("CARGO_BIN_EXE_trainyard"))
        .args(["export", "--model", "nope", "--url", &app.base])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(4));
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finetunes_of_every_family_export_folders_transformers_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let db = fresh_db().await;
    let mut settings = test_settings(&db.url);
    let base = settings.embedding_models["all-MiniLM-L6-v2"].clone();
    for &family in families::RANDOM_FAMILIES {
        families::make_family_model(family, &tmp.path().join(family));
        settings.embedding_models.insert(
            format!("tiny-{family}"),
            trainyard::config::EmbeddingModelConfig {
                name: format!("tiny-{family}"),
                provider: trainyard::config::EmbeddingProvider::Local(
                    trainyard::config::LocalProvider {
                        dir: Some(tmp.path().join(family).join("base").display().to_string()),
                        ..base.local().unwrap().clone()
                    },
                ),
                dimensions: 32,
                max_tokens: 64,
                ..base.clone()
            },
        );
    }
    let app = spawn_api(db.pool.clone(), Arc::new(settings)).await;
    let _worker = spawn_inprocess_worker(&app, 2);
    import_spam_docs(&app, "mail", 120).await;
    let dataset = start_spam_dataset(&app, "export", "mail").await;
    let d = app.wait_dataset(&dataset, Duration::from_secs(300)).await;
    assert_eq!(d["status"], "ready", "{d}");
    let texts = probe_texts();
    for &family in families::RANDOM_FAMILIES {
        let name = format!("{family}-export");
        let run = train_to_success(
            &app,
            json!({"dataset_id": dataset, "model_name": name, "mode": "finetune",
                   "base_model": format!("tiny-{family}"), "auto_promote": true,
                   "hyperparameters": {"epochs": 1, "batch_size": 16, "max_tokens": 64,
                                        "learning_rate": 0.003, "encoder_learning_rate": 0.001,
                                        "hidden_size": 16, "seed": 5}}),
        )
        .await;
        assert_eq!(run["base_model"], format!("tiny-{family}"), "{run}");
        wait_loaded(&app, &name, 1).await;
        let (status, served) = app
            .post(
                &format!("/api/v1/models/{name}/batch"),
                json!({"texts": texts}),
            )
            .await;
        assert_eq!(status, 200, "{served}");
        let out_dir = tmp.path().join(format!("{family}-export"));
        let cli = Command::new(env!("CARGO_BIN_EXE_trainyard"))
            .args([
                "export", "--model", &name, "--json", "--url", &app.base, "--dir",
            ])
            .arg(&out_dir)
            .output()
            .unwrap();
        assert!(
            cli.status.success(),
            "trainyard export: {}",
            String::from_utf8_lossy(&cli.stderr)
        );
        let folder = out_dir.join(format!("{name}-v1"));
        let config: Value =
            serde_json::from_slice(&std::fs::read(folder.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["model_type"], families::model_type(family));
        let python = python_scores(&folder, json!({"texts": texts}));
        let diff = max_diff(&served, &python, "spam");
        eprintln!(
            "{family} finetuned export: max |trainyard - transformers| over 50 texts = {diff:e}"
        );
        assert!(
            diff < 1e-4,
            "{family}: transformers reproduces the scores: {diff}"
        );
    }
    db.drop_db().await;
}
