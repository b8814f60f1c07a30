//! Errors of routing, said the way the document says the route: a `405 Method Not Allowed`
//! carries the `Allow` header (RFC 9110 §15.5.6) with the methods the document lists for the
//! path, a path parameter that does not parse is a 400 naming the parameter as documented
//! (poem-openapi's own message calls it `param0`), and a query parameter that does not parse
//! is a 400 with its name in `param`.
use std::sync::OnceLock;

use poem::http::{header, HeaderValue, StatusCode};
use poem::{Endpoint, IntoResponse, Request, Response};

/// Each documented path as segments (`{name}` matches any one segment) with its methods.
fn documented_paths() -> &'static [(Vec<String>, String)] {
    static PATHS: OnceLock<Vec<(Vec<String>, String)>> = OnceLock::new();
    PATHS.get_or_init(|| {
        super::generated_document()["paths"]
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

fn is_parameter(segment: &str) -> bool {
    segment.starts_with('{') && segment.ends_with('}')
}

/// The documented path template matching a request path, and its methods.
fn route_of(path: &str) -> Option<&'static (Vec<String>, String)> {
    let wanted: Vec<&str> = path.split('/').collect();
    documented_paths().iter().find(|(template, _)| {
        template.len() == wanted.len()
            && template
                .iter()
                .zip(&wanted)
                .all(|(t, w)| t == w || is_parameter(t))
    })
}

/// The `Allow` value for a request path, when the document has that path.
pub fn allowed_methods(path: &str) -> Option<&'static str> {
    route_of(path).map(|(_, methods)| methods.as_str())
}

/// The documented name and the sent value of the `index`-th path parameter of `path`.
fn path_parameter(path: &str, index: usize) -> Option<(String, String)> {
    let (template, _) = route_of(path)?;
    template
        .iter()
        .zip(path.split('/'))
        .filter(|(t, _)| is_parameter(t))
        .nth(index)
        .map(|(t, v)| (t[1..t.len() - 1].to_string(), v.to_string()))
}

/// A 400 naming the path parameter poem-openapi could not parse.
fn path_error(path: &str, error: &poem_openapi::error::ParsePathError) -> Option<Response> {
    let index: usize = error.name.strip_prefix("param")?.parse().ok()?;
    let (name, value) = path_parameter(path, index)?;
    let value = percent_decoded(&value);
    let reason = error.reason.replace("string_", "");
    Some(
        super::errors::ApiError::bad_request(
            format!("`{value}` is not a valid `{name}`: {reason}"),
            Some(&name),
        )
        .into_response(),
    )
}

/// A 400 naming the query parameter poem-openapi could not parse (missing, wrong type, out of
/// range, not one of the documented values) in `param`, with poem-openapi's own message.
fn param_error(error: &poem_openapi::error::ParseParamError) -> Response {
    super::errors::ApiError::bad_request(error.to_string(), Some(error.name)).into_response()
}

fn percent_decoded(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Adds `Allow` to a 405 (keeping the JSON error body); names path parameters in their 400s.
pub async fn around<E: Endpoint>(ep: std::sync::Arc<E>, req: Request) -> poem::Result<Response> {
    let path = req.uri().path().to_string();
    let mut response = match ep.call(req).await {
        Ok(r) => r.into_response(),
        Err(e) if e.status() == StatusCode::METHOD_NOT_ALLOWED => {
            super::errors::poem_error_to_json(e).await
        }
        Err(e) => match e
            .downcast_ref::<poem_openapi::error::ParsePathError>()
            .and_then(|p| path_error(&path, p))
            .or_else(|| {
                e.downcast_ref::<poem_openapi::error::ParseParamError>()
                    .map(param_error)
            }) {
            Some(response) => response,
            None => return Err(e),
        },
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
    use super::{allowed_methods, path_parameter, percent_decoded};

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
        assert_eq!(
            path_parameter("/api/v1/models/m/versions/x/promote", 1),
            Some(("version".into(), "x".into()))
        );
        assert_eq!(percent_decoded("a%20b%zz"), "a b%zz");
    }
}
