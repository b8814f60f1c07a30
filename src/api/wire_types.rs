//! Values whose JSON shape poem-openapi cannot describe by itself (a number or a map, a string
//! or an array, an integer or null), each with the schema the document declares for it.
//!
//! `Threshold` and `EmbeddingInput` keep the raw JSON: the handlers check it and answer with
//! their own error codes (422 `invalid_threshold`, OpenAI's 400s), so the declared schema is
//! what the server accepts and anything outside it gets a 4xx from the handler.
use std::borrow::Cow;

use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type};
use serde_json::Value;

use super::limits::{MAX_INPUTS_PER_REQUEST, MAX_TEXT_CHARS};

fn number_between(lo: f64, hi: f64) -> MetaSchemaRef {
    MetaSchemaRef::Inline(Box::new(MetaSchema {
        minimum: Some(lo),
        maximum: Some(hi),
        ..MetaSchema::new_with_format("number", "double")
    }))
}

fn text_schema() -> MetaSchema {
    MetaSchema {
        min_length: Some(1),
        max_length: Some(MAX_TEXT_CHARS),
        ..MetaSchema::new("string")
    }
}

/// Implements poem-openapi's traits for a newtype over raw JSON with a declared schema.
macro_rules! declared_json {
    ($ty:ident, $name:literal, $schema:expr) => {
        impl Type for $ty {
            const IS_REQUIRED: bool = true;
            type RawValueType = Self;
            type RawElementValueType = Self;
            fn name() -> Cow<'static, str> {
                $name.into()
            }
            fn schema_ref() -> MetaSchemaRef {
                MetaSchemaRef::Inline(Box::new($schema))
            }
            fn as_raw_value(&self) -> Option<&Self> {
                Some(self)
            }
            fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
                Box::new(self.as_raw_value().into_iter())
            }
        }
        impl ToJSON for $ty {
            fn to_json(&self) -> Option<Value> {
                Some(self.0.clone())
            }
        }
    };
}

/// A decision threshold: one number in [0, 1] for every label, or a `{label: number}` map.
#[derive(Debug, Clone)]
pub struct Threshold(pub Value);

declared_json!(
    Threshold,
    "threshold",
    MetaSchema {
        one_of: vec![
            number_between(0.0, 1.0),
            MetaSchemaRef::Inline(Box::new(MetaSchema {
                additional_properties: Some(Box::new(number_between(0.0, 1.0))),
                ..MetaSchema::new("object")
            })),
        ],
        ..MetaSchema::ANY
    }
);

impl ParseFromJSON for Threshold {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        // Checked by the handler against the model's labels (422 `invalid_threshold`).
        Ok(Threshold(value.unwrap_or_default()))
    }
}

/// `/v1/embeddings` input: one text, or an array of texts.
#[derive(Debug, Clone)]
pub struct EmbeddingInput(pub Value);

declared_json!(
    EmbeddingInput,
    "embedding_input",
    MetaSchema {
        one_of: vec![
            MetaSchemaRef::Inline(Box::new(text_schema())),
            MetaSchemaRef::Inline(Box::new(MetaSchema {
                items: Some(Box::new(MetaSchemaRef::Inline(Box::new(text_schema())))),
                min_items: Some(1),
                max_items: Some(MAX_INPUTS_PER_REQUEST),
                ..MetaSchema::new("array")
            })),
        ],
        ..MetaSchema::ANY
    }
);

impl ParseFromJSON for EmbeddingInput {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            None | Some(Value::Null) => Err(ParseError::expected_input()),
            // Checked by the handler (OpenAI-shaped 400s naming `input`).
            Some(v) => Ok(EmbeddingInput(v)),
        }
    }
}

/// A label's value on a record: 0 or 1, or null where the label is masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaskedLabel(pub Option<u8>);

impl Type for MaskedLabel {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;
    fn name() -> Cow<'static, str> {
        "masked_label".into()
    }
    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(MetaSchema {
            minimum: Some(0.0),
            maximum: Some(1.0),
            nullable: true,
            ..MetaSchema::new_with_format("integer", "uint8")
        }))
    }
    fn as_raw_value(&self) -> Option<&Self> {
        Some(self)
    }
    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ToJSON for MaskedLabel {
    fn to_json(&self) -> Option<Value> {
        Some(self.0.map_or(Value::Null, Value::from))
    }
}

impl ParseFromJSON for MaskedLabel {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            None | Some(Value::Null) => Ok(MaskedLabel(None)),
            Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n <= 1) => {
                Ok(MaskedLabel(n.as_u64().map(|n| n as u8)))
            }
            Some(other) => Err(ParseError::custom(format!(
                "a label value is 0, 1 or null, not {other}"
            ))),
        }
    }
}
