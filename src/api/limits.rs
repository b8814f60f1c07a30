//! The API's hard limits: the values the OpenAPI document declares (maxItems, maxLength,
//! minimum/maximum) and the upper bounds that configuration may only lower.
//!
//! poem-openapi's validator attributes take literals, so each limit is written twice: here and
//! in the `#[oai(validator(..))]` of the field that carries it. The tests at the bottom read
//! the generated document and fail when the two disagree.

/// Largest request body, in bytes (`server.max_body_bytes` may lower it). Bigger bodies get 413.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Most texts in one `/v1/embeddings` request (`server.max_inputs_per_request` may lower it).
pub const MAX_INPUTS_PER_REQUEST: usize = 2048;
/// Most characters (Unicode scalar values) in one text (`server.max_text_chars` may lower it).
pub const MAX_TEXT_CHARS: usize = 100_000;
/// Largest page (`limit`) of a listing (`server.page_size_max` may lower it).
pub const PAGE_SIZE_MAX: i64 = 1000;
/// Most texts in one `/batch` request (`inference.max_batch_texts` may lower it).
pub const MAX_BATCH_TEXTS: usize = 1024;
/// Most documents or annotations in one ingest call.
pub const MAX_INGEST_ITEMS: usize = 10_000;
/// Most characters in a source, external id, annotator or label name.
pub const MAX_NAME_CHARS: usize = 512;
/// Most characters in a dataset's name.
pub const MAX_DATASET_NAME_CHARS: usize = 200;
/// The `pattern` of every text and name that may not be blank: at least one character that is
/// neither whitespace nor an ASCII information separator (U+001C to U+001F, which Python's
/// `\s` counts as whitespace and Rust's does not), so that the document means the same to
/// a Python client, a Rust client and this server.
pub const NOT_BLANK: &str = r"[^\s\x1c-\x1f]";

/// Whether `text` fails [`NOT_BLANK`]: empty, or only whitespace and information separators.
pub fn is_blank(text: &str) -> bool {
    text.chars()
        .all(|c| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// The limits as one sentence for the document's description.
pub fn describe() -> String {
    format!(
        "Limits (hard upper bounds; a deployment's configuration may only lower them): request \
         bodies up to {MAX_BODY_BYTES} bytes (larger ones get 413), at most {MAX_TEXT_CHARS} \
         characters per text, {MAX_INPUTS_PER_REQUEST} inputs per `/v1/embeddings` request, \
         {MAX_BATCH_TEXTS} texts per `/batch`, {MAX_INGEST_ITEMS} documents or annotations per \
         ingest call, pages of 1 to {PAGE_SIZE_MAX} items. Values over a limit get a 4xx in the \
         error shape naming the field."
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn document() -> Value {
        serde_json::from_str(&crate::api::openapi_json()).unwrap()
    }

    fn property<'a>(doc: &'a Value, schema: &str, field: &str) -> &'a Value {
        let p = &doc["components"]["schemas"][schema]["properties"][field];
        assert!(p.is_object(), "{schema}.{field} is documented");
        p
    }

    #[test]
    fn blank_is_what_the_pattern_refuses() {
        let pattern = regex::Regex::new(NOT_BLANK).unwrap();
        for text in [
            "",
            " ",
            "\t\n\r",
            "\u{3000}\u{a0}",
            "\u{1c}\u{1f} ",
            "\u{85}\u{2029}",
        ] {
            assert!(is_blank(text) && !pattern.is_match(text), "{text:?}");
        }
        for text in ["a", " a ", "\u{feff}", "\u{200b}", "\u{0}", "-"] {
            assert!(!is_blank(text) && pattern.is_match(text), "{text:?}");
        }
    }

    #[test]
    fn documented_limits_are_the_constants() {
        let doc = document();
        let n = |v: &Value| v.as_u64().unwrap_or_else(|| panic!("a number: {v}")) as usize;
        let batch = property(&doc, "BatchRequest", "texts");
        assert_eq!(n(&batch["maxItems"]), MAX_BATCH_TEXTS);
        assert_eq!(n(&batch["items"]["maxLength"]), MAX_TEXT_CHARS);
        let predict = property(&doc, "PredictRequest", "text");
        assert_eq!(n(&predict["maxLength"]), MAX_TEXT_CHARS);
        let docs = property(&doc, "DocumentsIn", "documents");
        assert_eq!(n(&docs["maxItems"]), MAX_INGEST_ITEMS);
        let notes = property(&doc, "AnnotationsIn", "annotations");
        assert_eq!(n(&notes["maxItems"]), MAX_INGEST_ITEMS);
        for field in ["text", "title", "description"] {
            let p = property(&doc, "DocumentIn", field);
            assert_eq!(n(&p["maxLength"]), MAX_TEXT_CHARS, "DocumentIn.{field}");
        }
        for (schema, field) in [
            ("DocumentIn", "source"),
            ("DocumentIn", "external_id"),
            ("AnnotationIn", "source"),
            ("AnnotationIn", "external_id"),
            ("AnnotationIn", "annotator"),
        ] {
            let p = property(&doc, schema, field);
            assert_eq!(n(&p["maxLength"]), MAX_NAME_CHARS, "{schema}.{field}");
        }
        let name = property(&doc, "CreateDataset", "name");
        assert_eq!(n(&name["maxLength"]), MAX_DATASET_NAME_CHARS);
        // Every text and name that may not be blank says so with the one pattern the server
        // checks (`is_blank`).
        for (schema, field) in [
            ("PredictRequest", "text"),
            ("DocumentIn", "source"),
            ("DocumentIn", "external_id"),
            ("AnnotationIn", "source"),
            ("AnnotationIn", "external_id"),
            ("AnnotationIn", "annotator"),
            ("CreateDataset", "name"),
            ("LabelSchemaIn", "labels"),
        ] {
            let p = property(&doc, schema, field);
            let p = if p["type"] == "array" { &p["items"] } else { p };
            assert_eq!(p["pattern"], NOT_BLANK, "{schema}.{field}");
            assert_eq!(p["minLength"], 1, "{schema}.{field}");
        }
        assert_eq!(property(&doc, "BatchRequest", "texts")["minItems"], 1);
        let mut pages = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                for param in op["parameters"].as_array().into_iter().flatten() {
                    let schema = &param["schema"];
                    match param["name"].as_str() {
                        Some("limit") => {
                            pages += 1;
                            assert_eq!(schema["minimum"], 1.0, "{method} {path} limit");
                            assert_eq!(
                                schema["maximum"], PAGE_SIZE_MAX as f64,
                                "{method} {path} limit"
                            );
                        }
                        Some("offset") => {
                            assert_eq!(schema["minimum"], 0.0, "{method} {path} offset")
                        }
                        _ => {}
                    }
                }
            }
        }
        assert!(pages >= 4, "every listing declares its page size ({pages})");
        let description = doc["info"]["description"].as_str().unwrap();
        assert!(description.contains(&MAX_BODY_BYTES.to_string()));
    }
}
