//! `trainyard import FILE`: documents and annotations from JSONL or CSV, straight into Postgres.
//!
//! JSONL: one object per line: `{source, external_id, title?, description?, tags?, text?,
//! metadata?, annotations?: [{annotator, labels: {name: bool}, annotated_at?}]}`.
//! CSV: a header with `external_id` and any of `title, description, tags, text`; every column
//! named `label:NAME` holds that label (1/0/true/false; empty = not annotated). `--source`
//! names the source and `--annotator` the annotator for CSV rows.
use std::io::BufRead;
use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;

use crate::datasets::documents::{
    insert_annotations, upsert_documents, NewAnnotation, NewDocument,
};

#[derive(clap::Args)]
pub struct ImportArgs {
    /// A .jsonl or .csv file.
    pub file: PathBuf,
    /// Source name for CSV rows (JSONL rows name their own).
    #[arg(long)]
    pub source: Option<String>,
    /// Annotator for CSV label columns.
    #[arg(long, default_value = "import")]
    pub annotator: String,
}

#[derive(Deserialize)]
struct JsonAnnotation {
    annotator: String,
    labels: std::collections::BTreeMap<String, bool>,
    annotated_at: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
struct JsonLine {
    #[serde(flatten)]
    document: NewDocument,
    #[serde(default)]
    annotations: Vec<JsonAnnotation>,
}

fn annotations_of(
    doc: &NewDocument,
    items: Vec<JsonAnnotation>,
    now: DateTime<Utc>,
) -> Vec<NewAnnotation> {
    items
        .into_iter()
        .flat_map(|a| {
            let at = a.annotated_at.unwrap_or(now);
            a.labels
                .into_iter()
                .map(move |(label, value)| (a.annotator.clone(), label, value, at))
        })
        .map(|(annotator, label, value, annotated_at)| NewAnnotation {
            source: doc.source.clone(),
            external_id: doc.external_id.clone(),
            annotator,
            label,
            value,
            annotated_at,
        })
        .collect()
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "y" => Some(true),
        "0" | "false" | "no" | "n" => Some(false),
        _ => None,
    }
}

fn read_csv(
    args: &ImportArgs,
    now: DateTime<Utc>,
) -> anyhow::Result<(Vec<NewDocument>, Vec<NewAnnotation>)> {
    let source = args
        .source
        .clone()
        .context("--source is required for CSV files")?;
    let mut reader = csv::Reader::from_path(&args.file)?;
    let headers = reader.headers()?.clone();
    let col = |name: &str| headers.iter().position(|h| h == name);
    let id_col = col("external_id").context("the CSV needs an `external_id` column")?;
    let labels: Vec<(usize, String)> = headers
        .iter()
        .enumerate()
        .filter_map(|(i, h)| h.strip_prefix("label:").map(|l| (i, l.to_string())))
        .collect();
    let (mut docs, mut anns) = (Vec::new(), Vec::new());
    for (line, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("CSV row {}", line + 2))?;
        let get = |name: &str| {
            col(name)
                .and_then(|i| record.get(i))
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let external_id = record.get(id_col).unwrap_or_default().to_string();
        anyhow::ensure!(
            !external_id.is_empty(),
            "CSV row {}: empty external_id",
            line + 2
        );
        docs.push(NewDocument {
            source: source.clone(),
            external_id: external_id.clone(),
            title: get("title"),
            description: get("description"),
            tags: get("tags")
                .map(|t| t.split(',').map(|s| s.trim().to_string()).collect())
                .unwrap_or_default(),
            text: get("text"),
            metadata: serde_json::json!({}),
        });
        for (i, label) in &labels {
            let raw = record.get(*i).unwrap_or_default();
            if raw.trim().is_empty() {
                continue;
            }
            let value = parse_bool(raw).with_context(|| {
                format!(
                    "CSV row {}: `{raw}` in label:{label} is not 0/1/true/false",
                    line + 2
                )
            })?;
            anns.push(NewAnnotation {
                source: source.clone(),
                external_id: external_id.clone(),
                annotator: args.annotator.clone(),
                label: label.clone(),
                value,
                annotated_at: now,
            });
        }
    }
    Ok((docs, anns))
}

fn read_jsonl(
    args: &ImportArgs,
    now: DateTime<Utc>,
) -> anyhow::Result<(Vec<NewDocument>, Vec<NewAnnotation>)> {
    let file = std::fs::File::open(&args.file)
        .with_context(|| format!("opening {}", args.file.display()))?;
    let (mut docs, mut anns) = (Vec::new(), Vec::new());
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: JsonLine =
            serde_json::from_str(&line).with_context(|| format!("line {}", n + 1))?;
        anyhow::ensure!(
            !parsed.document.source.is_empty() && !parsed.document.external_id.is_empty(),
            "line {}: source and external_id are required",
            n + 1
        );
        anns.extend(annotations_of(&parsed.document, parsed.annotations, now));
        docs.push(parsed.document);
    }
    Ok((docs, anns))
}

pub async fn import(args: ImportArgs) -> anyhow::Result<()> {
    let now = Utc::now();
    let is_csv = args
        .file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let (docs, anns) = if is_csv {
        read_csv(&args, now)?
    } else {
        read_jsonl(&args, now)?
    };
    let (_, pool) = crate::start(true).await?;
    let bar = ProgressBar::new((docs.len() + anns.len()) as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:12} [{bar:40}] {pos}/{len} ({per_sec})")
            .unwrap()
            .progress_chars("=> "),
    );
    bar.set_message("documents");
    let mut tx = pool.begin().await?;
    let (mut inserted, mut updated) = (0, 0);
    for chunk in docs.chunks(2000) {
        let (i, u) = upsert_documents(&mut tx, chunk).await?;
        inserted += i;
        updated += u;
        bar.inc(chunk.len() as u64);
    }
    bar.set_message("annotations");
    let mut labels = 0;
    for chunk in anns.chunks(5000) {
        let (n, missing) = insert_annotations(&mut tx, chunk).await?;
        anyhow::ensure!(
            missing.is_empty(),
            "annotations name unknown documents: {:?}",
            &missing[..missing.len().min(5)]
        );
        labels += n;
        bar.inc(chunk.len() as u64);
    }
    tx.commit().await?;
    bar.finish_and_clear();
    println!(
        "imported {} documents ({inserted} new, {updated} updated) and {labels} label rows",
        docs.len()
    );
    Ok(())
}
