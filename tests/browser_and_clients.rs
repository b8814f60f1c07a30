//! Real clients against a real server: Swagger UI rendered by headless Chromium, and the
//! official `openai` Python package calling `/v1/embeddings` unchanged.
mod support;

use std::process::Command;
use std::sync::Arc;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swagger_ui_renders_in_headless_chromium() {
    let db = fresh_db().await;
    let app = spawn_api(db.pool.clone(), Arc::new(test_settings(&db.url))).await;
    let profile = std::env::temp_dir().join(format!("ty-chromium-{}", uuid::Uuid::new_v4()));
    let url = format!("{}/docs/", app.base);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                &format!("--user-data-dir={}", profile.display()),
                "--virtual-time-budget=15000",
                "--dump-dom",
                &url,
            ])
            .output()
            .expect("chromium is installed (scripts/test.sh installs it)")
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    // Swagger UI fetched /openapi.json and rendered operations from it.
    assert!(
        dom.contains("swagger-ui"),
        "no Swagger UI in the DOM: {}",
        &dom[..dom.len().min(500)]
    );
    for needle in ["opblock", "/api/v1/datasets", "/v1/embeddings", "trainyard"] {
        assert!(
            dom.contains(needle),
            "`{needle}` not rendered; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_python_client_works_unchanged() {
    let db = fresh_db().await;
    let app = spawn_api(db.pool.clone(), Arc::new(test_settings(&db.url))).await;
    let python = format!(
        "{}/bin/python",
        std::env::var("TRAINYARD_VENV").expect("TRAINYARD_VENV (source scripts/env.sh)")
    );
    let script = r#"
import json, sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused")
texts = ["The cat sat on the mat.", "Totally free money, click now!!!"]
default = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)          # base64 on the wire
floats = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts[0], encoding_format="float")
try:
    client.embeddings.create(model="no-such-model", input="x")
    error = None
except Exception as e:
    error = type(e).__name__ + ": " + str(getattr(e, "code", None)) + ": " + str(e)
print(json.dumps({"default": [d.embedding for d in default.data], "float": floats.data[0].embedding,
                  "model": default.model, "usage": default.usage.prompt_tokens, "error": error}))
"#;
    let base = app.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args(["-c", script, &base])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let default: Vec<Vec<f32>> = serde_json::from_value(v["default"].clone()).unwrap();
    let float: Vec<f32> = serde_json::from_value(v["float"].clone()).unwrap();
    assert_eq!(default.len(), 2);
    assert_eq!(default[0].len(), 384);
    let diff = default[0]
        .iter()
        .zip(&float)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(diff < 1e-6, "base64 and float encodings agree ({diff})");
    let direct = app
        .state
        .embedders
        .local_encoder()
        .await
        .unwrap()
        .encode(vec!["The cat sat on the mat.".into()])
        .await
        .unwrap();
    let diff = direct.vectors[0]
        .iter()
        .zip(&float)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(diff < 1e-6, "same as the encoder ({diff})");
    assert_eq!(v["model"], "all-MiniLM-L6-v2");
    assert!(v["usage"].as_u64().unwrap() > 4);
    let error = v["error"].as_str().unwrap();
    assert!(
        error.starts_with("NotFoundError") && error.contains("model_not_found"),
        "{error}"
    );
    db.drop_db().await;
}
