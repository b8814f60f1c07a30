//! `trainyard import FILE`: documents and annotations from JSONL or CSV, straight into Postgres.
//!
//! JSONL: one object per line: `{source, external_id, title?, description?, tags?, text?,
//! metadata?, annotations?: [{annotator, labels: {name: bool}, annotated_at?}]}`.
//! CSV: a header with `external_id` and any of `title, description, tags, text`; every column
//! named `label:NAME` holds that label (1/0/true/false; empty = not annotated). `--source`
//! names the source and `--annotator` the annotator for CSV rows.
//!
//! Parsing is `datasets::import_parse` (a pure function). Every bad row is printed on stderr
//! with its line number and reason; the good rows are imported and the command then exits 1
//! if any row was bad, or, with `--strict`, nothing is imported when any row is bad.
use std::path::PathBuf;

use anyhow::Context;
use chrono::Utc;
use indicatif::{ProgressBar, ProgressStyle};

use crate::datasets::documents::{insert_annotations, upsert_documents};
use crate::datasets::import_parse::{parse_import, ImportFormat};

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
    /// Import nothing when any row is bad (by default the good rows are imported).
    #[arg(long)]
    pub strict: bool,
}

pub async fn import(args: ImportArgs) -> anyhow::Result<()> {
    let now = Utc::now();
    let is_csv = args
        .file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let format = if is_csv {
        ImportFormat::Csv {
            source: args
                .source
                .clone()
                .context("--source is required for CSV files")?,
            annotator: args.annotator.clone(),
        }
    } else {
        ImportFormat::Jsonl
    };
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let parsed = parse_import(&bytes, &format, now)
        .with_context(|| format!("importing {}", args.file.display()))?;
    drop(bytes);
    for bad in &parsed.bad_rows {
        eprintln!("{}: {bad}", args.file.display());
    }
    let bad = parsed.bad_rows.len();
    if bad > 0 && args.strict {
        anyhow::bail!(
            "{bad} of {} rows are bad (listed above); nothing imported (--strict)",
            parsed.rows
        );
    }
    let (docs, anns) = (parsed.documents, parsed.annotations);
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
    if bad > 0 {
        anyhow::bail!(
            "{bad} of {} rows are bad (listed above) and were not imported",
            parsed.rows
        );
    }
    Ok(())
}
