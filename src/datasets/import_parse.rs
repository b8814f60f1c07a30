//! The parsers behind `trainyard import`, as pure functions: a file's bytes in, the good rows
//! (documents and their annotations) and the bad rows (line number and reason) out.
//!
//! A row is kept or refused whole: a bad annotation refuses its document too. Nothing here
//! panics on any input (checked by property tests in `tests/it/bad_input_props.rs`):
//! - a UTF-8 byte-order mark at the start is skipped; CRLF and LF line ends are both accepted;
//! - bytes that are not UTF-8, NUL characters (Postgres `text` and `jsonb` cannot store them),
//!   fields over [`MAX_FIELD_BYTES`] and rows over [`MAX_ROW_BYTES`] make a row bad;
//! - JSONL: a line that is not a JSON object of the expected shape (wrong types, missing
//!   `source`/`external_id`) is bad; blank lines are skipped;
//! - CSV: a row whose field count differs from the header's, an empty `external_id`, or a
//!   label cell that is not 1/0/true/false/yes/no is bad. A header that is missing, not UTF-8
//!   or lacks `external_id` refuses the whole file ([`ImportFileError`]).
use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::documents::{NewAnnotation, NewDocument};

/// The largest field (a title, a text, a tag list, a metadata object) accepted, in bytes.
pub const MAX_FIELD_BYTES: usize = 1 << 20;
/// The largest row (a JSONL line, a CSV record) accepted, in bytes.
pub const MAX_ROW_BYTES: usize = 4 << 20;

/// What kind of file, and for CSV the names its rows do not carry themselves.
#[derive(Debug, Clone)]
pub enum ImportFormat {
    Jsonl,
    Csv { source: String, annotator: String },
}

/// A refused row: where it starts in the file and why it was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    /// 1-based line of the file where the row starts.
    pub line: usize,
    /// CSV only: 1-based record number, the header being row 1 (what a spreadsheet shows).
    pub csv_row: Option<usize>,
    pub reason: String,
}

impl fmt::Display for BadRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.csv_row {
            Some(row) => write!(f, "line {} (CSV row {row}): {}", self.line, self.reason),
            None => write!(f, "line {}: {}", self.line, self.reason),
        }
    }
}

/// The outcome of parsing a whole file.
#[derive(Debug, Default)]
pub struct ParsedImport {
    pub documents: Vec<NewDocument>,
    pub annotations: Vec<NewAnnotation>,
    pub bad_rows: Vec<BadRow>,
    /// Rows seen (good and bad; blank lines and the CSV header not counted).
    pub rows: usize,
}

/// A problem with the file as a whole: nothing in it can be read as rows.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImportFileError {
    #[error("the CSV file is empty: it needs a header with an `external_id` column")]
    EmptyCsv,
    #[error("the CSV header is not valid UTF-8")]
    HeaderNotUtf8,
    #[error("the CSV needs an `external_id` column (header: {0})")]
    NoExternalId(String),
    #[error("the CSV header names column `{0}` twice")]
    DuplicateColumn(String),
    #[error("{0} must not be empty or contain NUL characters")]
    BadName(&'static str),
}

/// Parses a whole file. Bad rows are collected, never fatal; only a file whose CSV header
/// cannot be used is refused.
pub fn parse_import(
    bytes: &[u8],
    format: &ImportFormat,
    now: DateTime<Utc>,
) -> Result<ParsedImport, ImportFileError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match format {
        ImportFormat::Jsonl => Ok(parse_jsonl(bytes, now)),
        ImportFormat::Csv { source, annotator } => parse_csv(bytes, source, annotator, now),
    }
}

#[derive(Deserialize)]
struct JsonAnnotation {
    annotator: String,
    labels: BTreeMap<String, bool>,
    annotated_at: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
struct JsonLine {
    #[serde(flatten)]
    document: NewDocument,
    #[serde(default)]
    annotations: Vec<JsonAnnotation>,
}

/// A JSON value's strings (keys included) hold no NUL: `jsonb` refuses `\u0000`.
fn json_has_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(json_has_nul),
        serde_json::Value::Object(map) => {
            map.iter().any(|(k, v)| k.contains('\0') || json_has_nul(v))
        }
        _ => false,
    }
}

/// Checks one text field: no NUL, not over the size limit.
fn check_text(name: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_FIELD_BYTES {
        return Err(format!(
            "`{name}` is {} bytes, more than the {MAX_FIELD_BYTES}-byte limit",
            value.len()
        ));
    }
    if let Some(at) = value.find('\0') {
        return Err(format!(
            "`{name}` contains a NUL character (at byte {at}), which Postgres cannot store"
        ));
    }
    Ok(())
}

fn check_required(name: &str, value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("`{name}` is required and must not be empty"));
    }
    check_text(name, value)
}

fn check_document(doc: &NewDocument) -> Result<(), String> {
    check_required("source", &doc.source)?;
    check_required("external_id", &doc.external_id)?;
    for (name, value) in [
        ("title", &doc.title),
        ("description", &doc.description),
        ("text", &doc.text),
    ] {
        if let Some(v) = value {
            check_text(name, v)?;
        }
    }
    let tag_bytes: usize = doc.tags.iter().map(String::len).sum();
    if tag_bytes > MAX_FIELD_BYTES {
        return Err(format!(
            "`tags` hold {tag_bytes} bytes, more than the {MAX_FIELD_BYTES}-byte limit"
        ));
    }
    for tag in &doc.tags {
        check_text("tags", tag)?;
    }
    if json_has_nul(&doc.metadata) {
        return Err("`metadata` contains a NUL character, which Postgres cannot store".into());
    }
    Ok(())
}

/// The UTF-8 text of a row's bytes, or why it is not.
fn utf8<'a>(what: &str, bytes: &'a [u8]) -> Result<&'a str, String> {
    std::str::from_utf8(bytes).map_err(|e| {
        format!(
            "{what} is not valid UTF-8 (bad byte at offset {})",
            e.valid_up_to()
        )
    })
}

/// serde_json's message without its " at line 1 column N" (every JSONL row is one line).
fn json_reason(e: &serde_json::Error) -> String {
    let message = e.to_string();
    let plain = match message.rfind(" at line ") {
        Some(cut) => &message[..cut],
        None => &message,
    };
    format!("not a valid document: {plain} (column {})", e.column())
}

fn parse_json_row(
    text: &str,
    now: DateTime<Utc>,
) -> Result<(NewDocument, Vec<NewAnnotation>), String> {
    let parsed: JsonLine = serde_json::from_str(text).map_err(|e| json_reason(&e))?;
    let document = parsed.document;
    check_document(&document)?;
    let mut annotations = Vec::new();
    for (i, a) in parsed.annotations.into_iter().enumerate() {
        check_required(&format!("annotations[{i}].annotator"), &a.annotator)?;
        for (label, value) in a.labels {
            check_required(&format!("annotations[{i}].labels key"), &label)?;
            annotations.push(NewAnnotation {
                source: document.source.clone(),
                external_id: document.external_id.clone(),
                annotator: a.annotator.clone(),
                label,
                value,
                annotated_at: a.annotated_at.unwrap_or(now),
            });
        }
    }
    Ok((document, annotations))
}

fn parse_jsonl(bytes: &[u8], now: DateTime<Utc>) -> ParsedImport {
    let mut out = ParsedImport::default();
    // A file ending in "\n" has an empty last piece: it is skipped as blank.
    for (index, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        out.rows += 1;
        let line = index + 1;
        let result = if raw.len() > MAX_ROW_BYTES {
            Err(format!(
                "the line is {} bytes, more than the {MAX_ROW_BYTES}-byte limit",
                raw.len()
            ))
        } else {
            utf8("the line", raw).and_then(|text| parse_json_row(text, now))
        };
        match result {
            Ok((document, annotations)) => {
                out.documents.push(document);
                out.annotations.extend(annotations);
            }
            Err(reason) => out.bad_rows.push(BadRow {
                line,
                csv_row: None,
                reason,
            }),
        }
    }
    out
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "y" => Some(true),
        "0" | "false" | "no" | "n" => Some(false),
        _ => None,
    }
}

/// Where each known column is in the header.
struct CsvColumns {
    names: Vec<String>,
    external_id: usize,
    title: Option<usize>,
    description: Option<usize>,
    tags: Option<usize>,
    text: Option<usize>,
    labels: Vec<(usize, String)>,
}

fn csv_columns(header: &csv::ByteRecord) -> Result<CsvColumns, ImportFileError> {
    let names: Vec<String> = header
        .iter()
        .map(|h| {
            std::str::from_utf8(h)
                .map(|s| s.trim().to_string())
                .map_err(|_| ImportFileError::HeaderNotUtf8)
        })
        .collect::<Result<_, _>>()?;
    for (i, name) in names.iter().enumerate() {
        if !name.is_empty() && names[..i].contains(name) {
            return Err(ImportFileError::DuplicateColumn(name.clone()));
        }
    }
    let col = |name: &str| names.iter().position(|h| h == name);
    let external_id = col("external_id").ok_or_else(|| {
        let mut shown = names.join(",");
        if shown.len() > 200 {
            let cut = (0..=200).rev().find(|&i| shown.is_char_boundary(i));
            shown.truncate(cut.unwrap_or(0));
            shown.push('…');
        }
        ImportFileError::NoExternalId(shown)
    })?;
    let labels = names
        .iter()
        .enumerate()
        .filter_map(|(i, h)| h.strip_prefix("label:").map(|l| (i, l.trim().to_string())))
        .filter(|(_, l)| !l.is_empty() && !l.contains('\0'))
        .collect();
    Ok(CsvColumns {
        external_id,
        title: col("title"),
        description: col("description"),
        tags: col("tags"),
        text: col("text"),
        labels,
        names,
    })
}

fn parse_csv_row(
    columns: &CsvColumns,
    record: &csv::ByteRecord,
    source: &str,
    annotator: &str,
    now: DateTime<Utc>,
) -> Result<(NewDocument, Vec<NewAnnotation>), String> {
    if record.len() != columns.names.len() {
        return Err(format!(
            "the row has {} fields, the header has {}",
            record.len(),
            columns.names.len()
        ));
    }
    let row_bytes: usize = record.iter().map(<[u8]>::len).sum();
    if row_bytes > MAX_ROW_BYTES {
        return Err(format!(
            "the row is {row_bytes} bytes, more than the {MAX_ROW_BYTES}-byte limit"
        ));
    }
    let mut fields = Vec::with_capacity(record.len());
    for (i, bytes) in record.iter().enumerate() {
        let name = &columns.names[i];
        let text = utf8(&format!("`{name}`"), bytes)?;
        check_text(name, text)?;
        fields.push(text);
    }
    let get = |index: Option<usize>| {
        index
            .map(|i| fields[i])
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let external_id = fields[columns.external_id].to_string();
    check_required("external_id", &external_id)?;
    let document = NewDocument {
        source: source.to_string(),
        external_id,
        title: get(columns.title),
        description: get(columns.description),
        tags: get(columns.tags)
            .map(|t| t.split(',').map(|s| s.trim().to_string()).collect())
            .unwrap_or_default(),
        text: get(columns.text),
        metadata: serde_json::json!({}),
    };
    let mut annotations = Vec::new();
    for (i, label) in &columns.labels {
        let raw = fields[*i];
        if raw.trim().is_empty() {
            continue;
        }
        let Some(value) = parse_bool(raw) else {
            let mut shown: String = raw.chars().take(40).collect();
            if shown.len() < raw.len() {
                shown.push('…');
            }
            return Err(format!(
                "`{shown}` in label:{label} is not 0/1/true/false/yes/no"
            ));
        };
        annotations.push(NewAnnotation {
            source: document.source.clone(),
            external_id: document.external_id.clone(),
            annotator: annotator.to_string(),
            label: label.clone(),
            value,
            annotated_at: now,
        });
    }
    Ok((document, annotations))
}

fn parse_csv(
    bytes: &[u8],
    source: &str,
    annotator: &str,
    now: DateTime<Utc>,
) -> Result<ParsedImport, ImportFileError> {
    if source.trim().is_empty() || source.contains('\0') {
        return Err(ImportFileError::BadName("--source"));
    }
    if annotator.trim().is_empty() || annotator.contains('\0') {
        return Err(ImportFileError::BadName("--annotator"));
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes);
    let mut record = csv::ByteRecord::new();
    // Reading from a byte slice cannot fail with I/O errors, and a flexible reader of byte
    // records has no other error: an Err here is treated like the end of the input.
    if !reader.read_byte_record(&mut record).unwrap_or(false) {
        return Err(ImportFileError::EmptyCsv);
    }
    let columns = csv_columns(&record)?;
    // The csv crate's own line count skips the line ends inside quoted fields; the line a row
    // starts on is counted here from its byte offset instead.
    let newlines: Vec<usize> = bytes
        .iter()
        .enumerate()
        .filter_map(|(i, &b)| (b == b'\n').then_some(i))
        .collect();
    let line_at = |byte: usize| {
        // A record's offset may point at the blank line ends skipped before it.
        let start = bytes
            .get(byte..)
            .and_then(|rest| rest.iter().position(|&b| b != b'\r' && b != b'\n'))
            .map_or(byte, |skip| byte + skip);
        newlines.partition_point(|&p| p < start) + 1
    };
    let mut out = ParsedImport::default();
    let mut csv_row = 1;
    loop {
        let line = line_at(reader.position().byte() as usize);
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                csv_row += 1;
                out.rows += 1;
                out.bad_rows.push(BadRow {
                    line,
                    csv_row: Some(csv_row),
                    reason: format!("unreadable CSV: {e}"),
                });
                break;
            }
        }
        csv_row += 1;
        out.rows += 1;
        let line = record
            .position()
            .map_or(line, |p| line_at(p.byte() as usize));
        match parse_csv_row(&columns, &record, source, annotator, now) {
            Ok((document, annotations)) => {
                out.documents.push(document);
                out.annotations.extend(annotations);
            }
            Err(reason) => out.bad_rows.push(BadRow {
                line,
                csv_row: Some(csv_row),
                reason,
            }),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn jsonl_keeps_good_rows_and_numbers_bad_ones() {
        let input = b"\xEF\xBB\xBF{\"source\":\"s\",\"external_id\":\"a\",\"text\":\"hi\"}\r\n\
            \r\n\
            {\"source\":\"s\",\"external_id\":5}\n\
            {\"source\":\"s\",\"external_id\":\"b\",\"text\":\"x\xff\"}\n\
            {\"source\":\"s\",\"external_id\":\"c\",\"text\":\"a\\u0000b\"}\n\
            {\"external_id\":\"d\"}\n\
            {\"source\":\"s\",\"external_id\":\"e\",\"annotations\":[{\"annotator\":\"x\",\"labels\":{\"spam\":true}}]}\n";
        let out = parse_import(input, &ImportFormat::Jsonl, now()).unwrap();
        let ids: Vec<&str> = out
            .documents
            .iter()
            .map(|d| d.external_id.as_str())
            .collect();
        assert_eq!(ids, ["a", "e"]);
        assert_eq!(out.annotations.len(), 1);
        let lines: Vec<usize> = out.bad_rows.iter().map(|b| b.line).collect();
        assert_eq!(lines, [3, 4, 5, 6], "{:?}", out.bad_rows);
        assert!(out.bad_rows[0].reason.contains("invalid type"));
        assert!(out.bad_rows[1].reason.contains("UTF-8"));
        assert!(out.bad_rows[2].reason.contains("NUL"));
        assert!(out.bad_rows[3].reason.contains("source"));
        assert_eq!(out.rows, 6);
    }

    #[test]
    fn csv_reports_rows_and_lines() {
        let input = b"external_id,text,label:spam\r\nm1,\"two\nlines\",1\r\nm2,hello,perhaps\r\n,no id,0\r\nm4,short\r\nm5,ok,\r\n";
        let format = ImportFormat::Csv {
            source: "mails".into(),
            annotator: "ops".into(),
        };
        let out = parse_import(input, &format, now()).unwrap();
        let ids: Vec<&str> = out
            .documents
            .iter()
            .map(|d| d.external_id.as_str())
            .collect();
        assert_eq!(ids, ["m1", "m5"]);
        assert_eq!(out.annotations.len(), 1);
        let at: Vec<(usize, Option<usize>)> =
            out.bad_rows.iter().map(|b| (b.line, b.csv_row)).collect();
        assert_eq!(
            at,
            [(4, Some(3)), (5, Some(4)), (6, Some(5))],
            "{:?}",
            out.bad_rows
        );
        assert_eq!(
            out.bad_rows[0].to_string(),
            "line 4 (CSV row 3): `perhaps` in label:spam is not 0/1/true/false/yes/no"
        );
    }

    #[test]
    fn csv_without_external_id_is_refused() {
        let format = ImportFormat::Csv {
            source: "s".into(),
            annotator: "a".into(),
        };
        assert!(matches!(
            parse_import(b"id,text\n1,x\n", &format, now()),
            Err(ImportFileError::NoExternalId(_))
        ));
        assert_eq!(
            parse_import(b"", &format, now()).unwrap_err(),
            ImportFileError::EmptyCsv
        );
    }
}
