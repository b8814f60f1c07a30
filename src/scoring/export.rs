//! A scoring job's results as JSON Lines or Apache Parquet, streamed: the rows are read in
//! pages of [`PAGE`] by position and each page leaves as soon as it is encoded (a Parquet row
//! group per page), so an export of millions of rows holds one page in memory, not the job.
//!
//! Parquet columns: position, document_id, source, external_id, version, scores (a list of
//! floats in the label order stored in the file's `trainyard.labels` metadata) and
//! positive_labels (a list of strings). Written with parquet's column writer, like the dataset
//! export.
use std::sync::Arc;

use futures::Stream;
use sqlx::PgPool;

use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, FloatType, Int32Type, Int64Type};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use super::store::{results_from, ScoringJobRow};
use super::ScoredDocument;
use crate::streamed_export::{Encoder, Format, Pending};

/// Rows read, encoded and sent at a time (one Parquet row group).
pub const PAGE: i64 = 20_000;

const SCHEMA: &str = "
message scored_document {
  required int32 position;
  required int64 document_id;
  required binary source (UTF8);
  required binary external_id (UTF8);
  required int32 version;
  required group scores (LIST) {
    repeated group list {
      required float element;
    }
  }
  required group positive_labels (LIST) {
    repeated group list {
      required binary element (UTF8);
    }
  }
}";

/// One JSON object a line: `{position, document_id, source, external_id, version, scores:
/// {label: p}, positive_labels}`.
pub fn to_jsonl(rows: &[ScoredDocument]) -> String {
    let mut out = String::new();
    for r in rows {
        let scores: serde_json::Map<String, serde_json::Value> = r
            .scores
            .iter()
            .map(|(l, s)| (l.clone(), serde_json::json!(s)))
            .collect();
        let line = serde_json::json!({
            "position": r.position,
            "document_id": r.document_id,
            "source": r.source,
            "external_id": r.external_id,
            "version": r.version,
            "scores": scores,
            "positive_labels": r.positive_labels,
        });
        out.push_str(&line.to_string());
        out.push('\n');
    }
    out
}

/// Definition and repetition levels of required lists of required values (def 0 = an empty
/// list, 1 = a value; rep 0 starts a row).
fn list_levels<T: Clone>(rows: impl Iterator<Item = Vec<T>>) -> (Vec<T>, Vec<i16>, Vec<i16>) {
    let (mut values, mut defs, mut reps) = (Vec::new(), Vec::new(), Vec::new());
    for row in rows {
        if row.is_empty() {
            defs.push(0);
            reps.push(0);
        }
        for (i, v) in row.into_iter().enumerate() {
            values.push(v);
            defs.push(1);
            reps.push(i16::from(i > 0));
        }
    }
    (values, defs, reps)
}

fn parquet_writer(
    job: &ScoringJobRow,
    sink: Pending,
) -> anyhow::Result<SerializedFileWriter<Pending>> {
    let schema = Arc::new(parse_message_type(SCHEMA)?);
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_key_value_metadata(Some(vec![
                KeyValue::new("trainyard.scoring_job_id".into(), job.id.to_string()),
                KeyValue::new("trainyard.model".into(), job.model_name.clone()),
                KeyValue::new("trainyard.version".into(), job.version.to_string()),
                KeyValue::new(
                    "trainyard.labels".into(),
                    serde_json::to_string(&job.labels)?,
                ),
                KeyValue::new(
                    "trainyard.thresholds".into(),
                    serde_json::to_string(&job.thresholds)?,
                ),
            ]))
            .build(),
    );
    Ok(SerializedFileWriter::new(sink, schema, props)?)
}

fn write_row_group(
    writer: &mut SerializedFileWriter<Pending>,
    rows: &[ScoredDocument],
) -> anyhow::Result<()> {
    let mut group = writer.next_row_group()?;
    let mut column = 0;
    while let Some(mut col) = group.next_column()? {
        match column {
            0 => {
                let v: Vec<i32> = rows.iter().map(|r| r.position).collect();
                col.typed::<Int32Type>().write_batch(&v, None, None)?;
            }
            1 => {
                let v: Vec<i64> = rows.iter().map(|r| r.document_id).collect();
                col.typed::<Int64Type>().write_batch(&v, None, None)?;
            }
            2 | 3 => {
                let v: Vec<ByteArray> = rows
                    .iter()
                    .map(|r| {
                        let s = if column == 2 {
                            &r.source
                        } else {
                            &r.external_id
                        };
                        ByteArray::from(s.as_bytes().to_vec())
                    })
                    .collect();
                col.typed::<ByteArrayType>().write_batch(&v, None, None)?;
            }
            4 => {
                let v: Vec<i32> = rows.iter().map(|r| r.version).collect();
                col.typed::<Int32Type>().write_batch(&v, None, None)?;
            }
            5 => {
                let (values, defs, reps) =
                    list_levels(rows.iter().map(|r| r.scores.iter().map(|s| s.1).collect()));
                col.typed::<FloatType>()
                    .write_batch(&values, Some(&defs), Some(&reps))?;
            }
            _ => {
                let (values, defs, reps) = list_levels(rows.iter().map(|r| {
                    r.positive_labels
                        .iter()
                        .map(|l| ByteArray::from(l.as_bytes().to_vec()))
                        .collect()
                }));
                col.typed::<ByteArrayType>()
                    .write_batch(&values, Some(&defs), Some(&reps))?;
            }
        }
        col.close()?;
        column += 1;
    }
    group.close()?;
    Ok(())
}

/// A done job's results as a stream of encoded chunks (one page each, the Parquet footer
/// last). A database error mid-way ends the stream with that error (the client sees a
/// truncated transfer, never a file that looks complete).
pub fn stream(
    pool: PgPool,
    job: ScoringJobRow,
    format: Format,
) -> anyhow::Result<impl Stream<Item = std::io::Result<Vec<u8>>> + Send + 'static> {
    let encoder = Encoder::new(
        format,
        |rows| to_jsonl(rows).into_bytes(),
        |sink| parquet_writer(&job, sink),
        write_row_group,
    )?;
    let total = job.documents_total;
    let job = Arc::new(job);
    Ok(crate::streamed_export::stream(
        encoder,
        total,
        PAGE,
        move |from| {
            let (pool, job) = (pool.clone(), job.clone());
            async move { results_from(&pool, &job, from, PAGE).await }
        },
    ))
}
