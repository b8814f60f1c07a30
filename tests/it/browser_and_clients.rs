//! Real clients against a real server: Swagger UI in headless Chromium (clicked through with
//! playwright-core), and the official `openai` Python package calling `/v1/embeddings` and
//! `/v1/models` unchanged.

use std::process::Command;
use std::sync::Arc;

use crate::support::*;

/// Swagger UI in real headless Chromium (driven by playwright-core from npm, see
/// tests/browser/): it renders, shows every operation of the document, "Try it out" on
/// `GET /api/v1/health` answers 200 inside the page, a token entered through "Authorize" makes
/// the protected `GET /api/v1/jobs` answer 200, no request leaves the machine, and a
/// screenshot is saved under the test output (`$CARGO_TARGET_DIR/test-output/`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swagger_ui_renders_in_headless_chromium() {
    let db = fresh_db().await;
    // Tokens required, as on a non-loopback address: "Authorize" must make a protected call work.
    let mut settings = test_settings(&db.url);
    settings.auth.mode = trainyard::config::AuthMode::Required;
    let app = spawn_api(db.pool.clone(), Arc::new(settings)).await;
    let token = trainyard::auth::create(
        &db.pool,
        "swagger-ui",
        &[trainyard::auth::Scope::Read],
        None,
    )
    .await
    .unwrap()
    .token;
    let doc: serde_json::Value = serde_json::from_str(&trainyard::api::openapi_json()).unwrap();
    let operations: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum();
    let out_dir = std::path::PathBuf::from(
        std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()),
    )
    .join("test-output");
    std::fs::create_dir_all(&out_dir).unwrap();
    let shot = out_dir.join("swagger-ui.png");
    let _ = std::fs::remove_file(&shot);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/swagger_ui.mjs");
    let base = app.base.clone();
    let shot_arg = shot.display().to_string();
    let token_arg = token.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .args([script, &base, &shot_arg, &token_arg])
            .output()
            .expect("node")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| {
            panic!(
                "no JSON from the browser script ({e}): {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(v["error"].is_null(), "browser script failed: {v}");
    assert_eq!(
        v["title"].as_str().map(|t| t.starts_with("trainyard")),
        Some(true),
        "{v}"
    );
    assert_eq!(
        v["operations"].as_u64(),
        Some(operations as u64),
        "every operation rendered"
    );
    assert_eq!(
        v["try_it_out_status"], "200",
        "Try it out inside the page: {v}"
    );
    assert!(
        v["try_it_out_body"]
            .as_str()
            .unwrap_or("")
            .contains("database"),
        "{v}"
    );
    assert_eq!(
        v["outside"],
        serde_json::json!([]),
        "no request left the machine"
    );
    assert!(
        v["requests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r.as_str().unwrap().ends_with("/api/v1/health")),
        "the call went out from the page: {v}"
    );
    assert_eq!(
        v["authorized_status"], "200",
        "a token entered through Authorize opens GET /api/v1/jobs: {v}"
    );
    assert_eq!(
        v["jobs_request_authorization"].as_str(),
        Some(format!("Bearer {token}").as_str()),
        "the page sent the token as a bearer header"
    );
    assert!(shot.exists(), "screenshot saved");
    eprintln!("Swagger UI screenshot: {}", shot.display());
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
listed = [m.id for m in client.models.list()]
one = client.models.retrieve("all-MiniLM-L6-v2").id
print(json.dumps({"default": [d.embedding for d in default.data], "float": floats.data[0].embedding,
                  "model": default.model, "usage": default.usage.prompt_tokens, "error": error,
                  "listed": listed, "retrieved": one}))
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
        .local_encoder("all-MiniLM-L6-v2")
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
    assert_eq!(
        v["listed"],
        serde_json::json!(["all-MiniLM-L6-v2"]),
        "models.list()"
    );
    assert_eq!(v["retrieved"], "all-MiniLM-L6-v2", "models.retrieve()");
    assert!(v["usage"].as_u64().unwrap() > 4);
    let error = v["error"].as_str().unwrap();
    assert!(
        error.starts_with("NotFoundError") && error.contains("model_not_found"),
        "{error}"
    );
    db.drop_db().await;
}
