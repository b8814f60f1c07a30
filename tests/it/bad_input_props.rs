//! Property tests for what untrusted input reaches: the text combining rules, the local model's
//! tokenising path (and the encoder behind it), and the import parsers (JSONL and CSV with
//! broken encodings, NUL bytes, huge fields, wrong types, missing fields, BOMs, CRLF). No
//! panic; every bad row is reported with its line number; every good row is kept. The last
//! test runs `trainyard import` on such a file against a real database.
use crate::support;

use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::json;
use trainyard::datasets::import_parse::{
    parse_import, ImportFileError, ImportFormat, ParsedImport, MAX_FIELD_BYTES, MAX_ROW_BYTES,
};
use trainyard::datasets::text::{checksum, combine_text};
use trainyard::ml::text_encoder::{load_tokenizer, plan_batches, EncoderOptions, TextEncoder};

/// Characters that break naive text handling, mixed with arbitrary Unicode scalar values.
fn nasty_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => any::<char>(),
        2 => prop::sample::select(vec![
            '\0', '\n', '\r', '\t', ' ', '\u{a0}', '\u{2028}', '\u{3000}', '\u{feff}', '\u{200b}',
            '\u{301}', '\u{202e}', '"', ',', '\\', '{', '😀', 'ß', 'İ', 'ﷺ', '\u{1f}', '\u{7f}',
        ]),
        3 => prop::char::range('a', 'z'),
    ]
}

fn text(max: usize) -> impl Strategy<Value = String> {
    vec(nasty_char(), 0..max).prop_map(|c| c.into_iter().collect())
}

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-12-03T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Combining never panics, cuts on characters, and each line of the result is one squashed,
    /// non-empty part.
    #[test]
    fn combine_text_follows_its_rules(
        title in proptest::option::of(text(60)),
        description in proptest::option::of(text(60)),
        body in proptest::option::of(text(200)),
        tags in vec(text(12), 0..5),
        max_chars in 0usize..300,
    ) {
        let full = combine_text(title.as_deref(), description.as_deref(), body.as_deref(), &tags, usize::MAX);
        let cut = combine_text(title.as_deref(), description.as_deref(), body.as_deref(), &tags, max_chars);
        prop_assert_eq!(cut.chars().count(), full.chars().count().min(max_chars));
        prop_assert!(full.starts_with(&cut));
        let all_blank = [&title, &description, &body]
            .iter()
            .all(|p| p.as_deref().is_none_or(|p| p.trim().is_empty()))
            && tags.iter().all(|t| t.trim().is_empty());
        prop_assert_eq!(full.is_empty(), all_blank);
        if !full.is_empty() {
            for line in full.split('\n') {
                prop_assert!(!line.is_empty(), "empty line in {:?}", full);
                prop_assert_eq!(line, line.trim());
                prop_assert!(!line.contains("  "), "double space in {:?}", line);
                prop_assert!(!line.chars().any(|c| c.is_whitespace() && c != ' '), "{:?}", line);
            }
        }
        let sum = checksum(&cut);
        prop_assert_eq!(sum.len(), 32);
        prop_assert!(sum.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }
}

#[test]
fn combine_text_cuts_a_huge_body() {
    let body: String = "ä ߷😀x\u{0}".repeat(1_000_000); // 5M characters, ~11 MB
    let t = combine_text(Some("title"), None, Some(&body), &[], 100_000);
    assert_eq!(t.chars().count(), 100_000);
    assert!(t.starts_with("title\nä ߷😀x\u{0}ä"));
    assert_eq!(checksum(&t).len(), 32);
}

// ---------------------------------------------------------------- tokenising and the encoder

fn model_dir() -> std::path::PathBuf {
    std::env::var("TRAINYARD_LOCAL_MODEL_DIR")
        .expect("TRAINYARD_LOCAL_MODEL_DIR (source scripts/env.sh)")
        .into()
}

fn tokenizer() -> &'static tokenizers::Tokenizer {
    static TOKENIZER: OnceLock<tokenizers::Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| load_tokenizer(&model_dir(), 256).expect("tokenizer.json loads"))
}

fn encoder() -> &'static TextEncoder {
    static ENCODER: OnceLock<TextEncoder> = OnceLock::new();
    ENCODER.get_or_init(|| {
        TextEncoder::start(EncoderOptions {
            model_dir: model_dir(),
            max_tokens: 256,
            max_tokens_per_batch: 2048,
            threads: 1,
            device: tch::Device::Cpu,
            pooling: Default::default(),
            classifier: None,
            batch_wait: std::time::Duration::ZERO,
            windows: None,
        })
        .expect("local model loads")
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any text tokenises: [CLS] … [SEP], at most 256 tokens; the batch plan covers every
    /// text once, in batches that respect the token budget.
    #[test]
    fn tokenising_any_text(texts in vec(text(400), 1..8), budget in 1usize..4096) {
        let tok = tokenizer();
        let (cls, sep) = (tok.token_to_id("[CLS]").unwrap(), tok.token_to_id("[SEP]").unwrap());
        let encodings = tok.encode_batch(texts.clone(), true);
        prop_assert!(encodings.is_ok(), "{:?}", encodings.err());
        let lengths: Vec<usize> = encodings
            .unwrap()
            .iter()
            .map(|e| {
                let ids = e.get_ids();
                assert!(ids.len() >= 2 && ids.len() <= 256, "{} tokens", ids.len());
                assert_eq!((ids[0], ids[ids.len() - 1]), (cls, sep));
                ids.len()
            })
            .collect();
        let plan = plan_batches(&lengths, budget);
        let mut seen = vec![0; texts.len()];
        for (rows, width, padded) in &plan {
            prop_assert!(!rows.is_empty());
            prop_assert!(rows.len() == 1 || rows.len() * width <= budget);
            for &i in rows {
                seen[i] += 1;
                prop_assert!(lengths[i] <= *width);
            }
            prop_assert_eq!(*padded, rows.iter().any(|&i| lengths[i] != *width));
        }
        prop_assert!(seen.iter().all(|&n| n == 1), "{:?}", seen);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Through the real model: every text gets a finite unit vector.
    #[test]
    fn encoder_embeds_any_text(texts in vec(text(200), 1..4)) {
        let out = encoder().encode_blocking(texts.clone()).unwrap();
        prop_assert_eq!(out.vectors.len(), texts.len());
        for (v, n) in out.vectors.iter().zip(&out.token_counts) {
            prop_assert!(*n >= 2 && *n <= 256);
            prop_assert_eq!(v.len(), 384);
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            prop_assert!(v.iter().all(|x| x.is_finite()) && (norm - 1.0).abs() < 1e-3, "norm {}", norm);
        }
    }
}

#[test]
fn encoder_takes_huge_and_degenerate_texts() {
    let texts = vec![
        String::new(),
        "\0\0\0".into(),
        "hello world ".repeat(200_000),
        "x".repeat(2_000_000),
        "😀".repeat(100_000),
        "\u{301}\u{301}\u{301}\u{202e}".into(),
        " \t\n\r ".into(),
        "a\0b".into(),
    ];
    let out = encoder().encode_blocking(texts.clone()).unwrap();
    assert_eq!(out.token_counts[2], 256, "a huge text is cut at 256 tokens");
    for v in &out.vectors {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "norm {norm}");
    }
}

// ---------------------------------------------------------------- import parsers

/// `csv`: a lone CR ends a CSV record, so two CSV rows may start on one (LF-counted) line.
fn check_invariants(bytes: &[u8], out: &ParsedImport, csv: bool) {
    let lines = bytes.iter().filter(|&&b| b == b'\n').count() + 1;
    assert!(out.bad_rows.len() + out.documents.len() == out.rows);
    let mut last = 0;
    for bad in &out.bad_rows {
        assert!(
            (bad.line > last || (csv && bad.line == last)) && bad.line >= 1 && bad.line <= lines,
            "line {} after {last} of {lines}",
            bad.line
        );
        last = bad.line;
        assert!(!bad.reason.is_empty());
    }
    for d in &out.documents {
        assert!(!d.external_id.trim().is_empty() && !d.source.trim().is_empty());
        for field in [&d.title, &d.description, &d.text].into_iter().flatten() {
            assert!(!field.contains('\0') && field.len() <= MAX_FIELD_BYTES);
        }
    }
}

/// Bytes that look like JSON or CSV often enough to reach deep into the parsers.
fn structured_bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(
        prop_oneof![
            3 => any::<u8>(),
            4 => prop::sample::select(b"{}[]\":,\\\n\r\t 0a1tfeluxsn\x00\xff\xc3\xef\xbb\xbf".to_vec()),
            2 => Just(b'"'),
        ],
        0..600,
    )
}

fn csv_format() -> ImportFormat {
    ImportFormat::Csv {
        source: "mails".into(),
        annotator: "ops".into(),
    }
}

const CSV_HEADER: &str = "external_id,title,text,tags,label:spam";

/// One generated row: good (kept) or one of the kinds of bad (refused).
#[derive(Debug, Clone)]
enum Row {
    Good {
        text: String,
        tags: Vec<String>,
        spam: Option<bool>,
    },
    NotUtf8(u8),
    Nul(bool),
    WrongType(u8),
    Missing(u8),
    Garbage(Vec<u8>),
}

fn row() -> impl Strategy<Value = Row> {
    prop_oneof![
        6 => (text(80), vec(text(8), 0..3), proptest::option::of(any::<bool>()))
            .prop_map(|(text, tags, spam)| Row::Good {
                text: text.replace('\0', ""),
                tags: tags.into_iter().map(|t| t.replace(['\0', ','], "")).collect(),
                spam,
            }),
        1 => (0u8..3).prop_map(Row::NotUtf8),
        1 => any::<bool>().prop_map(Row::Nul),
        1 => (0u8..4).prop_map(Row::WrongType),
        1 => (0u8..4).prop_map(Row::Missing),
        1 => vec(any::<u8>().prop_filter("one line", |b| *b != b'\n'), 0..40).prop_map(Row::Garbage),
    ]
}

const BAD_UTF8: [&[u8]; 3] = [b"\xff\xfe", b"\xc3", b"\xed\xa0\x80"];

fn jsonl_row(i: usize, row: &Row) -> Vec<u8> {
    let id = format!("doc-{i}");
    match row {
        Row::Good { text, tags, spam } => {
            let mut v = json!({"source": "s", "external_id": id, "text": text, "tags": tags});
            if let Some(spam) = spam {
                v["annotations"] = json!([{"annotator": "a", "labels": {"spam": spam}}]);
            }
            serde_json::to_vec(&v).unwrap()
        }
        Row::NotUtf8(k) => [
            format!(r#"{{"source":"s","external_id":"{id}","text":"ab"#).as_bytes(),
            BAD_UTF8[*k as usize],
            b"\"}",
        ]
        .concat(),
        Row::Nul(true) => {
            format!(r#"{{"source":"s","external_id":"{id}","text":"a\u0000b"}}"#).into_bytes()
        }
        Row::Nul(false) => {
            format!(r#"{{"source":"s","external_id":"{id}","metadata":{{"k\u0000":1}}}}"#)
                .into_bytes()
        }
        Row::WrongType(k) => match k {
            0 => format!(r#"{{"source":"s","external_id":{i}}}"#),
            1 => format!(r#"{{"source":"s","external_id":"{id}","tags":"a,b"}}"#),
            2 => format!(r#"{{"source":"s","external_id":"{id}","text":{{"x":1}}}}"#),
            _ => format!(
                r#"{{"source":"s","external_id":"{id}","annotations":[{{"annotator":"a","labels":{{"spam":"yes"}}}}]}}"#
            ),
        }
        .into_bytes(),
        Row::Missing(k) => match k {
            0 => format!(r#"{{"external_id":"{id}","text":"x"}}"#),
            1 => r#"{"source":"s","text":"x"}"#.to_string(),
            2 => r#"{"source":"s","external_id":"  "}"#.to_string(),
            _ => format!(r#"{{"source":"s","external_id":"{id}","annotations":[{{"labels":{{}}}}]}}"#),
        }
        .into_bytes(),
        Row::Garbage(bytes) => [b"x".as_slice(), bytes].concat(),
    }
}

fn csv_row(i: usize, row: &Row) -> Vec<u8> {
    let id = format!("doc-{i}");
    let write = |fields: &[&[u8]]| {
        let mut w = csv::WriterBuilder::new()
            .terminator(csv::Terminator::Any(b'\n'))
            .from_writer(Vec::new());
        w.write_record(fields).unwrap();
        let mut out = w.into_inner().unwrap();
        out.pop(); // the caller adds the line end
        out
    };
    match row {
        Row::Good { text, tags, spam } => {
            let spam = spam.map_or("", |s| if s { "1" } else { "false" });
            write(&[
                id.as_bytes(),
                b"",
                text.as_bytes(),
                tags.join(",").as_bytes(),
                spam.as_bytes(),
            ])
        }
        Row::NotUtf8(k) => write(&[id.as_bytes(), BAD_UTF8[*k as usize], b"x", b"", b""]),
        Row::Nul(quoted) => {
            if *quoted {
                format!("{id},t,\"a\0b\",,").into_bytes()
            } else {
                format!("{id},t,a\0b,,1").into_bytes()
            }
        }
        Row::WrongType(k) => match k {
            0 | 1 => format!("{id},t,x,,maybe").into_bytes(),
            _ => format!("{id},t,x,,2").into_bytes(),
        },
        Row::Missing(k) => match k {
            0 => format!("{id},t,x").into_bytes(),
            1 => ",t,x,,1".to_string().into_bytes(),
            2 => format!("{id},t,x,,1,extra").into_bytes(),
            _ => "\" \",t,x,,".to_string().into_bytes(),
        },
        Row::Garbage(_) => format!("{id},t").into_bytes(),
    }
}

/// Assembles a file: optional BOM, rows with LF or CRLF ends and blank lines between, and
/// the line number where each row starts.
fn assemble(
    header: Option<&str>,
    rows: &[Vec<u8>],
    layout: &[(bool, u8)],
    bom: bool,
) -> (Vec<u8>, Vec<usize>) {
    let mut out = Vec::new();
    if bom {
        out.extend_from_slice(b"\xEF\xBB\xBF");
    }
    if let Some(h) = header {
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let mut starts = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let (crlf, blank) = layout[i];
        for _ in 0..blank {
            out.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
        }
        starts.push(out.iter().filter(|&&b| b == b'\n').count() + 1);
        out.extend_from_slice(row);
        if i + 1 < rows.len() || crlf {
            out.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
        }
    }
    (out, starts)
}

fn expect_rows(out: &ParsedImport, rows: &[Row], starts: &[usize]) -> Result<(), TestCaseError> {
    let good: Vec<(usize, &Row)> = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r, Row::Good { .. }))
        .collect();
    let bad_lines: Vec<usize> = rows
        .iter()
        .zip(starts)
        .filter(|(r, _)| !matches!(r, Row::Good { .. }))
        .map(|(_, &s)| s)
        .collect();
    let got_lines: Vec<usize> = out.bad_rows.iter().map(|b| b.line).collect();
    prop_assert_eq!(got_lines, bad_lines, "{:?}", out.bad_rows);
    prop_assert_eq!(out.documents.len(), good.len());
    let mut labelled = 0;
    for (doc, (i, row)) in out.documents.iter().zip(&good) {
        let Row::Good { text, spam, .. } = row else {
            unreachable!()
        };
        prop_assert_eq!(&doc.external_id, &format!("doc-{i}"));
        prop_assert_eq!(doc.text.as_deref().unwrap_or(""), text.as_str());
        labelled += usize::from(spam.is_some());
    }
    prop_assert_eq!(out.annotations.len(), labelled);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn jsonl_parser_takes_any_bytes(bytes in structured_bytes()) {
        let out = parse_import(&bytes, &ImportFormat::Jsonl, now()).unwrap();
        check_invariants(&bytes, &out, false);
    }

    #[test]
    fn csv_parser_takes_any_bytes(bytes in structured_bytes(), with_header in any::<bool>()) {
        let bytes = if with_header { [CSV_HEADER.as_bytes(), b"\n", &bytes].concat() } else { bytes };
        match parse_import(&bytes, &csv_format(), now()) {
            Ok(out) => check_invariants(&bytes, &out, true),
            // Only a header that cannot be used refuses the whole file, and a good header
            // never is refused: the rows after it are good or bad rows, never fatal.
            Err(e) => {
                prop_assert!(!with_header, "a file with a good header was refused: {e}");
                prop_assert!(
                    matches!(
                        e,
                        ImportFileError::EmptyCsv
                            | ImportFileError::HeaderNotUtf8
                            | ImportFileError::NoExternalId(_)
                            | ImportFileError::DuplicateColumn(_)
                    ),
                    "refused for a reason that is not the header's: {e}"
                );
            }
        }
    }

    /// Good rows are kept exactly; each bad row is reported at the line it starts on.
    #[test]
    fn jsonl_keeps_good_rows_and_reports_bad_lines(
        rows in vec(row(), 0..24),
        layout in vec((any::<bool>(), 0u8..2), 24),
        bom in any::<bool>(),
    ) {
        let bytes: Vec<Vec<u8>> = rows.iter().enumerate().map(|(i, r)| jsonl_row(i, r)).collect();
        let (file, starts) = assemble(None, &bytes, &layout, bom);
        let out = parse_import(&file, &ImportFormat::Jsonl, now()).unwrap();
        check_invariants(&file, &out, false);
        expect_rows(&out, &rows, &starts)?;
        for (doc, row) in out.documents.iter().zip(rows.iter().filter(|r| matches!(r, Row::Good { .. }))) {
            let Row::Good { tags, .. } = row else { unreachable!() };
            prop_assert_eq!(&doc.tags, tags);
        }
    }

    #[test]
    fn csv_keeps_good_rows_and_reports_bad_lines(
        rows in vec(row(), 0..24),
        layout in vec((any::<bool>(), 0u8..2), 24),
        bom in any::<bool>(),
    ) {
        let bytes: Vec<Vec<u8>> = rows.iter().enumerate().map(|(i, r)| csv_row(i, r)).collect();
        let (file, starts) = assemble(Some(CSV_HEADER), &bytes, &layout, bom);
        let out = parse_import(&file, &csv_format(), now()).unwrap();
        check_invariants(&file, &out, true);
        expect_rows(&out, &rows, &starts)?;
    }
}

#[test]
fn huge_fields_and_rows_are_bad_rows_not_crashes() {
    let row = |text: &str| {
        serde_json::to_vec(&json!({"source": "s", "external_id": "x", "text": text})).unwrap()
    };
    let big = "é".repeat(MAX_FIELD_BYTES / 2 + 1); // one byte over the limit
    let fits = "é".repeat(MAX_FIELD_BYTES / 2 - 100);
    let file = [row(&fits), b"\n".to_vec(), row(&big), b"\n".to_vec()].concat();
    let out = parse_import(&file, &ImportFormat::Jsonl, now()).unwrap();
    assert_eq!(out.documents.len(), 1);
    assert_eq!(out.bad_rows.len(), 1);
    assert_eq!(out.bad_rows[0].line, 2);
    assert!(
        out.bad_rows[0].reason.contains("`text` is"),
        "{:?}",
        out.bad_rows
    );

    let line = format!(
        r#"{{"source":"s","external_id":"y","metadata":{{"m":"{}"}}}}"#,
        "z".repeat(MAX_ROW_BYTES)
    );
    let out = parse_import(line.as_bytes(), &ImportFormat::Jsonl, now()).unwrap();
    assert_eq!(out.bad_rows[0].line, 1);
    assert!(out.bad_rows[0].reason.contains("limit"));

    // An unclosed quote swallows the rest of the file into one field: one bad row, at its start.
    let file = format!(
        "{CSV_HEADER}\nm1,t,ok,,1\nm2,t,\"never closed,,1\n{}",
        "m3,t,x,,0\n".repeat(200_000)
    );
    let out = parse_import(file.as_bytes(), &csv_format(), now()).unwrap();
    assert_eq!(out.documents.len(), 1);
    assert_eq!(
        (out.bad_rows.len(), out.bad_rows[0].line),
        (1, 3),
        "{:?}",
        out.bad_rows
    );
}

/// `trainyard import` on a file with good and bad rows: the good ones are in Postgres, every
/// bad one is named on stderr with its line, the exit status is 1; `--strict` imports nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_command_keeps_good_rows_and_names_bad_lines() {
    let db = support::fresh_db().await;
    let dir = std::env::temp_dir().join(format!("ty-badimport-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |file: &std::path::Path, extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_trainyard"))
            .arg("import")
            .arg(file)
            .args(extra)
            .env("DATABASE_URL", &db.url)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let count = |source: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM documents WHERE source = $1")
                .bind(source)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };

    let jsonl = dir.join("mixed.jsonl");
    let mut file = b"\xEF\xBB\xBF".to_vec();
    file.extend_from_slice(br#"{"source":"j","external_id":"1","text":"fine","annotations":[{"annotator":"a","labels":{"spam":true}}]}"#);
    file.extend_from_slice(b"\r\n");
    file.extend_from_slice(br#"{"source":"j","external_id":"2","text":"nul \u0000 here"}"#);
    file.extend_from_slice(b"\r\n");
    file.extend_from_slice(b"{\"source\":\"j\",\"external_id\":\"3\",\"text\":\"bad \xff\"}\n");
    file.extend_from_slice(br#"{"source":"j","external_id":4}"#);
    file.extend_from_slice(b"\n");
    file.extend_from_slice(br#"{"source":"j","external_id":"5","title":"also fine"}"#);
    std::fs::write(&jsonl, &file).unwrap();

    let out = run(&jsonl, &["--strict"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nothing imported"), "{stderr}");
    assert_eq!(count("j").await, 0);

    let out = run(&jsonl, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for needle in [
        "line 2: ",
        "NUL",
        "line 3: ",
        "UTF-8",
        "line 4: ",
        "invalid type",
    ] {
        assert!(stderr.contains(needle), "`{needle}` in {stderr}");
    }
    assert!(stderr.contains("3 of 5 rows are bad"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("imported 2 documents (2 new, 0 updated) and 1 label rows"));
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT external_id FROM documents WHERE source = 'j' ORDER BY 1")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(ids, ["1", "5"]);

    let csv = dir.join("mixed.csv");
    std::fs::write(
        &csv,
        b"\xEF\xBB\xBFexternal_id,text,label:spam\r\nc1,\"multi\r\nline\",1\r\nc2,\"nul\x00\",0\r\nc3,short\r\nc4,ok,\r\n",
    )
    .unwrap();
    let out = run(&csv, &["--source", "c"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("line 4 (CSV row 3)") && stderr.contains("NUL"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 5 (CSV row 4)") && stderr.contains("2 fields"),
        "{stderr}"
    );
    assert_eq!(count("c").await, 2);
    let body: String = sqlx::query_scalar("SELECT body FROM documents WHERE external_id = 'c1'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(body, "multi\r\nline");

    let _ = std::fs::remove_dir_all(&dir);
    db.drop_db().await;
}
