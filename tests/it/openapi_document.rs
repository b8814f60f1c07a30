//! The OpenAPI document under openapi/ is generated from the code; this fails when it is
//! stale. Regenerate with `UPDATE_OPENAPI=1 cargo test --release --test it openapi_document`.
#[test]
fn committed_openapi_document_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
    let generated = trainyard::api::openapi_json() + "\n";
    if std::env::var("UPDATE_OPENAPI").is_ok() {
        std::fs::write(path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(committed == generated, "openapi/openapi.json is stale: run UPDATE_OPENAPI=1 cargo test --release --test it openapi_document");
    let doc: serde_json::Value = serde_json::from_str(&committed).unwrap();
    for path in [
        "/api/v1/datasets",
        "/api/v1/jobs/{id}/cancel",
        "/v1/embeddings",
        "/v1/dataset/build",
        "/health",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} documented");
    }
}
