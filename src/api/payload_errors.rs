//! Says which field of a JSON body is wrong when poem-openapi rejects it, and refuses what
//! poem-openapi would let through although the document forbids it.
//!
//! poem-openapi takes a JSON number or boolean where the document declares a string (it
//! stringifies them), so every JSON body is first checked against its operation's declared
//! schema (`check_request`): a value of the wrong JSON type is a 400 naming the field, like
//! any other schema violation. Strings holding NUL (U+0000), which Postgres cannot store as
//! text, are refused there too, with 422, except by the inference operations (those the scope
//! table marks `Access::Inference`), which score and answer their bodies and store nothing.
//!
//! poem-openapi's payload error names types, not fields ("Expected input type "string", found
//! null (occurred while parsing "DocumentIn") ... (occurred while parsing "DocumentsIn")"). Its
//! last type is the body's schema; walking the body against that schema in the generated
//! OpenAPI document finds the first field that is missing, null, or of the wrong kind, with
//! its path (`documents[0].source`). Only consulted after poem has already refused a body, so
//! the walk is a diagnosis, never a second validator: when it finds nothing, poem's own
//! message stands.
use serde_json::{Map, Value};

use super::routes::{self, schemas};

/// Why a JSON body is refused before poem-openapi parses it.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A value breaks the declared schema: (path, problem); 400.
    Invalid(String, String),
    /// A string holds NUL (U+0000) at this path; 422.
    Nul(String),
}

/// Checks a JSON body against the schema its operation declares; `None` when it conforms (or
/// is not JSON, or the route takes no JSON body: poem-openapi answers those itself).
pub fn check_request(method: &str, path: &str, body: &[u8]) -> Option<Refusal> {
    let route = routes::lookup(method, path)?.route?;
    let schema = route.operation.body.as_ref()?;
    let value: Value = serde_json::from_slice(body).ok()?;
    // Inference operations score and answer their bodies and store nothing of them.
    let stored = route.operation.access != super::auth::Access::Inference;
    if let Some(at) = nul_at(&value, "").filter(|_| stored) {
        return Some(Refusal::Nul(at));
    }
    first_problem(schemas(), schema, &value, "").map(|(p, why)| Refusal::Invalid(p, why))
}

/// The 4xx for a refused body, in the one error shape.
pub fn refusal_response(refusal: Refusal) -> poem::Response {
    use poem::IntoResponse;
    match refusal {
        Refusal::Invalid(path, problem) if path.is_empty() => {
            super::errors::ApiError::bad_request(format!("invalid request body: {problem}"), None)
        }
        Refusal::Invalid(path, problem) => super::errors::ApiError::bad_request(
            format!("invalid request body: `{path}` {problem}"),
            Some(&path),
        ),
        Refusal::Nul(path) => super::errors::ApiError::unprocessable(
            "nul_character",
            format!("`{path}` contains a NUL character (U+0000), which cannot be stored"),
            Some(&path),
        ),
    }
    .into_response()
}

/// The path of the first string (or object key) holding NUL.
fn nul_at(value: &Value, path: &str) -> Option<String> {
    match value {
        Value::String(s) => s.contains('\0').then(|| path.to_string()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_at(v, &format!("{path}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            if k.contains('\0') {
                Some(path.to_string())
            } else {
                nul_at(v, &join(path, k))
            }
        }),
        _ => None,
    }
}

/// The outermost type poem-openapi was parsing when it failed (the body's schema name).
fn body_schema_name(reason: &str) -> Option<&str> {
    const MARK: &str = "(occurred while parsing \"";
    let start = reason.rfind(MARK)? + MARK.len();
    let end = reason[start..].find('"')?;
    Some(&reason[start..start + end])
}

/// `(path, problem)` for the first wrong field of `body`, given poem-openapi's `reason`; the
/// path is empty when the body itself has the wrong kind.
pub fn explain(reason: &str, body: &[u8]) -> Option<(String, String)> {
    let name = body_schema_name(reason)?;
    let schema = schemas().get(name)?;
    let value: Value = serde_json::from_slice(body).ok()?;
    first_problem(schemas(), schema, &value, "")
}

fn resolve<'a>(schemas: &'a Map<String, Value>, schema: &'a Value) -> &'a Value {
    match schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
    {
        Some(name) => schemas.get(name).unwrap_or(schema),
        None => schema,
    }
}

/// A typed schema that is not declared nullable (`{}` takes anything, null included).
fn refuses_null(schema: &Value) -> bool {
    schema.get("nullable") != Some(&Value::Bool(true))
        && ["type", "$ref", "allOf", "oneOf"]
            .iter()
            .any(|k| schema.get(k).is_some())
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn first_problem(
    schemas: &Map<String, Value>,
    schema: &Value,
    value: &Value,
    path: &str,
) -> Option<(String, String)> {
    let schema = resolve(schemas, schema);
    if let Some(parts) = schema.get("allOf").and_then(Value::as_array) {
        return parts
            .iter()
            .find_map(|part| first_problem(schemas, part, value, path));
    }
    let expected = |what: &str| {
        Some((
            path.to_string(),
            format!("must be {what}, not {}", kind_of(value)),
        ))
    };
    if value.is_null() {
        // A null where a value is allowed (optional fields are checked by their parent).
        return None;
    }
    if let Some(problem) = outside_limits(schema, value) {
        return Some((path.to_string(), problem));
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let Some(object) = value.as_object() else {
                return expected("an object");
            };
            for field in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                match object.get(field) {
                    None => return Some((join(path, field), "is required".to_string())),
                    Some(Value::Null) => {
                        return Some((
                            join(path, field),
                            "is required and may not be null".to_string(),
                        ))
                    }
                    Some(_) => {}
                }
            }
            let properties = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties").filter(|a| a.is_object());
            object.iter().find_map(|(key, v)| {
                let field_schema = properties.and_then(|p| p.get(key)).or(extra)?;
                if v.is_null() && refuses_null(field_schema) {
                    // poem-openapi would read it as absent (and take a default).
                    return Some((join(path, key), "may not be null".to_string()));
                }
                first_problem(schemas, field_schema, v, &join(path, key))
            })
        }
        Some("array") => {
            let Some(items) = value.as_array() else {
                return expected("an array");
            };
            let item_schema = schema.get("items")?;
            items
                .iter()
                .enumerate()
                .find_map(|(i, v)| first_problem(schemas, item_schema, v, &format!("{path}[{i}]")))
        }
        Some("string") => {
            if !value.is_string() {
                return expected("a string");
            }
            let allowed = schema.get("enum").and_then(Value::as_array)?;
            (!allowed.contains(value)).then(|| {
                let names: Vec<String> = allowed.iter().map(Value::to_string).collect();
                (
                    path.to_string(),
                    format!("must be one of {}", names.join(", ")),
                )
            })
        }
        Some("integer") if !value.is_i64() && !value.is_u64() => expected("an integer"),
        Some("number") if !value.is_number() => expected("a number"),
        Some("boolean") if !value.is_boolean() => expected("a boolean"),
        _ => None,
    }
}

/// The declared limit (length, item count, range) that `value` breaks, if any.
fn outside_limits(schema: &Value, value: &Value) -> Option<String> {
    let limit = |key: &str| schema.get(key).and_then(Value::as_f64);
    let plural = |n: f64, one: &str, many: &str| {
        if n == 1.0 {
            format!("{n} {one}")
        } else {
            format!("{n} {many}")
        }
    };
    let (size, one, many) = match value {
        Value::String(s) => (Some(s.chars().count() as f64), "character", "characters"),
        Value::Array(a) => (Some(a.len() as f64), "item", "items"),
        Value::Object(o) => (Some(o.len() as f64), "property", "properties"),
        _ => (None, "", ""),
    };
    if let Some(size) = size {
        let (lo, hi) = match value {
            Value::String(_) => ("minLength", "maxLength"),
            Value::Array(_) => ("minItems", "maxItems"),
            _ => ("minProperties", "maxProperties"),
        };
        if let Some(min) = limit(lo).filter(|min| size < *min) {
            return Some(format!("must have at least {}", plural(min, one, many)));
        }
        if let Some(max) = limit(hi).filter(|max| size > *max) {
            return Some(format!(
                "must have at most {}, not {size}",
                plural(max, one, many)
            ));
        }
    }
    let x = value.as_f64()?;
    if let Some(min) = limit("minimum").filter(|min| x < *min) {
        return Some(format!("must be >= {min}, not {x}"));
    }
    if let Some(max) = limit("maximum").filter(|max| x > *max) {
        return Some(format!("must be <= {max}, not {x}"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(reason_type: &str, body: Value) -> Option<(String, String)> {
        let reason =
            format!("Expected input type \"string\", found null. (occurred while parsing \"{reason_type}\")");
        explain(&reason, body.to_string().as_bytes())
    }

    #[test]
    fn names_the_missing_or_mistyped_field_with_its_path() {
        assert_eq!(
            check(
                "DocumentsIn",
                json!({"documents": [{"source": "s", "external_id": "1"}, {"external_id": "2"}]})
            ),
            Some(("documents[1].source".into(), "is required".into()))
        );
        assert_eq!(
            check(
                "DocumentsIn",
                json!({"documents": [{"source": null, "external_id": "1"}]})
            ),
            Some((
                "documents[0].source".into(),
                "is required and may not be null".into()
            ))
        );
        assert_eq!(
            check("DocumentsIn", json!({"documents": {"source": "s"}})),
            Some(("documents".into(), "must be an array, not an object".into()))
        );
        assert_eq!(
            check("DocumentsIn", json!([1, 2])),
            Some((String::new(), "must be an object, not an array".into()))
        );
        assert_eq!(
            check(
                "DocumentsIn",
                json!({"documents": [{"source": "s", "external_id": "1", "tags": "a,b"}]})
            ),
            Some((
                "documents[0].tags".into(),
                "must be an array, not a string".into()
            ))
        );
    }

    #[test]
    fn says_nothing_when_it_cannot_tell() {
        assert_eq!(check("NoSuchType", json!({})), None);
        assert_eq!(explain("no type named here", b"{}"), None);
        assert_eq!(
            explain("x (occurred while parsing \"DocumentsIn\")", b"{not json"),
            None
        );
    }

    #[test]
    fn bodies_are_checked_against_their_operations_schema() {
        let body = |v: Value| v.to_string().into_bytes();
        assert_eq!(
            check_request("POST", "/predict", &body(json!({"text": false}))),
            Some(Refusal::Invalid(
                "text".into(),
                "must be a string, not a boolean".into()
            ))
        );
        assert_eq!(
            check_request(
                "POST",
                "/api/v1/models/m/batch",
                &body(json!({"texts": ["a", 7]}))
            ),
            Some(Refusal::Invalid(
                "texts[1]".into(),
                "must be a string, not a number".into()
            ))
        );
        assert_eq!(
            check_request(
                "POST",
                "/api/v1/documents",
                &body(
                    json!({"documents": [{"source": "s", "external_id": "1", "tags": ["a\u{0}b"]}]})
                )
            ),
            Some(Refusal::Nul("documents[0].tags[0]".into()))
        );
        // Inference stores nothing: NUL is scored like any character.
        for (path, value) in [
            ("/predict", json!({"text": "a\u{0}b"})),
            ("/api/v1/models/m/batch", json!({"texts": ["a\u{0}b"]})),
            ("/v1/embeddings", json!({"model": "m", "input": "a\u{0}b"})),
        ] {
            assert_eq!(check_request("POST", path, &body(value)), None, "{path}");
        }
        assert_eq!(
            check_request(
                "POST",
                "/predict",
                &body(json!({"text": "fine", "threshold": null}))
            ),
            None
        );
        assert_eq!(
            check_request("GET", "/predict", &body(json!({"text": 1}))),
            None
        );
        assert_eq!(check_request("POST", "/predict", b"{not json"), None);
        assert_eq!(
            check_request(
                "POST",
                "/v1/dataset/build",
                &body(json!({"aid_list": [1], "force_regenerate": null, "description": null}))
            ),
            Some(Refusal::Invalid(
                "force_regenerate".into(),
                "may not be null".into()
            ))
        );
    }

    #[test]
    fn names_the_field_that_breaks_a_declared_limit() {
        assert_eq!(
            check("DocumentsIn", json!({"documents": []})),
            Some(("documents".into(), "must have at least 1 item".into()))
        );
        assert_eq!(
            check(
                "DocumentsIn",
                json!({"documents": [{"source": "s", "external_id": "x".repeat(513), "text": "t"}]})
            ),
            Some((
                "documents[0].external_id".into(),
                "must have at most 512 characters, not 513".into()
            ))
        );
        assert_eq!(
            check(
                "CreateDataset",
                json!({"name": "n", "selection": {}, "label_schema": {"type": "binary", "labels": ["a"]},
                       "splits": {"train": 1.5}})
            ),
            Some(("splits.train".into(), "must be <= 1, not 1.5".into()))
        );
    }
}
