//! Errors of routing, said the way the document says the route: a `405 Method Not Allowed`
//! carries the `Allow` header (RFC 9110 §15.5.6) with the methods the document lists for the
//! path, a path parameter that does not parse is a 400 naming the parameter as documented
//! (poem-openapi's own message calls it `param0`), and a query parameter that does not parse
//! is a 400 with its name in `param`.
use poem::http::{header, HeaderValue, StatusCode};
use poem::{Endpoint, IntoResponse, Request, Response};

use super::routes;

/// The `Allow` value for a request path, when the document has that path.
fn allowed_methods(method: &str, path: &str) -> Option<String> {
    routes::lookup(method, path).map(|m| m.path.allow())
}

/// The documented name and the sent value of the `index`-th path parameter of `path`.
fn path_parameter(method: &str, path: &str, index: usize) -> Option<(String, String)> {
    routes::lookup(method, path)?
        .path
        .parameters(path)
        .nth(index)
        .map(|(name, value)| (name.to_string(), value.to_string()))
}

/// A 400 naming the path parameter poem-openapi could not parse.
fn path_error(
    method: &str,
    path: &str,
    error: &poem_openapi::error::ParsePathError,
) -> Option<Response> {
    let index: usize = error.name.strip_prefix("param")?.parse().ok()?;
    let (name, value) = path_parameter(method, path, index)?;
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
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let mut response = match ep.call(req).await {
        Ok(r) => r.into_response(),
        Err(e) if e.status() == StatusCode::METHOD_NOT_ALLOWED => {
            super::errors::poem_error_to_json(e).await
        }
        Err(e) => match e
            .downcast_ref::<poem_openapi::error::ParsePathError>()
            .and_then(|p| path_error(&method, &path, p))
            .or_else(|| {
                e.downcast_ref::<poem_openapi::error::ParseParamError>()
                    .map(param_error)
            }) {
            Some(response) => response,
            None => return Err(e),
        },
    };
    if response.status() == StatusCode::METHOD_NOT_ALLOWED {
        if let Some(allow) =
            allowed_methods(&method, &path).and_then(|m| HeaderValue::from_str(&m).ok())
        {
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
        let datasets = allowed_methods("PUT", "/api/v1/datasets").unwrap();
        assert!(
            datasets.contains("GET") && datasets.contains("POST"),
            "{datasets}"
        );
        let one = allowed_methods(
            "PUT",
            "/api/v1/datasets/0b0c2a9e-0000-4000-8000-000000000000",
        )
        .unwrap();
        assert!(one.contains("GET") && one.contains("DELETE"), "{one}");
        assert_eq!(
            allowed_methods("GET", "/api/v1/jobs/x/cancel").as_deref(),
            Some("POST")
        );
        assert_eq!(allowed_methods("PUT", "/nowhere"), None);
        // A GET of the literal path is routed there (poem takes static segments first).
        assert_eq!(
            allowed_methods("GET", "/v1/dataset/build").as_deref(),
            Some("POST")
        );
        assert_eq!(
            path_parameter("POST", "/api/v1/models/m/versions/x/promote", 1),
            Some(("version".into(), "x".into()))
        );
        assert_eq!(percent_decoded("a%20b%zz"), "a b%zz");
    }
}
