//! `405 Method Not Allowed` answers carry the `Allow` header (RFC 9110 §15.5.6): the methods
//! the API document lists for that path.
use std::sync::OnceLock;

use poem::http::{header, HeaderValue, StatusCode};
use poem::{Endpoint, IntoResponse, Request, Response};

/// Each documented path as segments (`{name}` matches any one segment) with its methods.
fn documented_paths() -> &'static [(Vec<String>, String)] {
    static PATHS: OnceLock<Vec<(Vec<String>, String)>> = OnceLock::new();
    PATHS.get_or_init(|| {
        let doc: serde_json::Value =
            serde_json::from_str(&super::openapi_json()).unwrap_or_default();
        doc["paths"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(path, item)| {
                let methods: Vec<String> = item
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(method, _)| method.to_uppercase())
                    .collect();
                (
                    path.split('/').map(str::to_string).collect(),
                    methods.join(", "),
                )
            })
            .collect()
    })
}

/// The `Allow` value for a request path, when the document has that path.
pub fn allowed_methods(path: &str) -> Option<&'static str> {
    let wanted: Vec<&str> = path.split('/').collect();
    documented_paths()
        .iter()
        .find(|(template, _)| {
            template.len() == wanted.len()
                && template
                    .iter()
                    .zip(&wanted)
                    .all(|(t, w)| t == w || (t.starts_with('{') && t.ends_with('}')))
        })
        .map(|(_, methods)| methods.as_str())
}

/// Adds `Allow` to a 405, keeping the JSON error body.
pub async fn around<E: Endpoint>(ep: std::sync::Arc<E>, req: Request) -> poem::Result<Response> {
    let path = req.uri().path().to_string();
    let mut response = match ep.call(req).await {
        Ok(r) => r.into_response(),
        Err(e) if e.status() == StatusCode::METHOD_NOT_ALLOWED => {
            super::errors::poem_error_to_json(e).await
        }
        Err(e) => return Err(e),
    };
    if response.status() == StatusCode::METHOD_NOT_ALLOWED {
        if let Some(allow) = allowed_methods(&path).and_then(|m| HeaderValue::from_str(m).ok()) {
            response.headers_mut().insert(header::ALLOW, allow);
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::allowed_methods;

    #[test]
    fn allow_lists_the_documented_methods_of_a_path() {
        let datasets = allowed_methods("/api/v1/datasets").unwrap();
        assert!(
            datasets.contains("GET") && datasets.contains("POST"),
            "{datasets}"
        );
        let one = allowed_methods("/api/v1/datasets/0b0c2a9e-0000-4000-8000-000000000000").unwrap();
        assert!(one.contains("GET") && one.contains("DELETE"), "{one}");
        assert_eq!(allowed_methods("/api/v1/jobs/x/cancel"), Some("POST"));
        assert_eq!(allowed_methods("/nowhere"), None);
    }
}
