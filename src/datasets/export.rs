//! Dataset export as JSON Lines or Apache Parquet (one row per record, embedding as a list of
//! floats), streamed: records are read in pages of [`PAGE`] by position and each page leaves
//! as soon as it is encoded (a Parquet row group per page), so an export of millions of records
//! holds one page in memory, not the dataset.
//!
//! Written with parquet's column writer (no Arrow dependency): columns position, document_id,
//! source, external_id, checksum, text, split, labels (JSON text), disagreement, embedding.
use std::sync::Arc;

use futures::Stream;
use sqlx::PgPool;

use parquet::basic::Compression;
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, FloatType, Int32Type, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use super::store::{records_from, DatasetRow, RecordRow};
use crate::streamed_export::{Encoder, Format, Pending};

/// Records read, encoded and sent at a time (one Parquet row group).
pub const PAGE: i64 = 5_000;

const SCHEMA: &str = "
message record {
  required int32 position;
  required int64 document_id;
  required binary source (UTF8);
  required binary external_id (UTF8);
  required binary checksum (UTF8);
  required binary text (UTF8);
  required binary split (UTF8);
  required binary labels (JSON);
  required boolean disagreement;
  optional group embedding (LIST) {
    repeated group list {
      required float element;
    }
  }
}";

fn strings(rows: &[RecordRow], f: impl Fn(&RecordRow) -> String) -> Vec<ByteArray> {
    rows.iter()
        .map(|r| ByteArray::from(f(r).into_bytes()))
        .collect()
}

fn parquet_writer(
    dataset: &DatasetRow,
    sink: Pending,
) -> anyhow::Result<SerializedFileWriter<Pending>> {
    let schema = Arc::new(parse_message_type(SCHEMA)?);
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_key_value_metadata(Some(vec![
                parquet::file::metadata::KeyValue::new(
                    "trainyard.dataset_id".into(),
                    dataset.id.to_string(),
                ),
                parquet::file::metadata::KeyValue::new(
                    "trainyard.embedding_model".into(),
                    dataset.embedding_model.clone(),
                ),
            ]))
            .build(),
    );
    Ok(SerializedFileWriter::new(sink, schema, props)?)
}

fn write_row_group(
    writer: &mut SerializedFileWriter<Pending>,
    rows: &[RecordRow],
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
            2..=7 => {
                let v = match column {
                    2 => strings(rows, |r| r.source.clone()),
                    3 => strings(rows, |r| r.external_id.clone()),
                    4 => strings(rows, |r| r.checksum.clone()),
                    5 => strings(rows, |r| r.text.clone()),
                    6 => strings(rows, |r| r.split.clone()),
                    _ => strings(rows, |r| r.labels.to_string()),
                };
                col.typed::<ByteArrayType>().write_batch(&v, None, None)?;
            }
            8 => {
                let v: Vec<bool> = rows.iter().map(|r| r.disagreement).collect();
                col.typed::<BoolType>().write_batch(&v, None, None)?;
            }
            _ => {
                // Levels: def 0 = null list, 1 = empty list, 2 = value; rep 0 starts a row.
                let (mut values, mut defs, mut reps) = (Vec::new(), Vec::new(), Vec::new());
                for r in rows {
                    match &r.embedding {
                        None => {
                            defs.push(0);
                            reps.push(0);
                        }
                        Some(v) if v.is_empty() => {
                            defs.push(1);
                            reps.push(0);
                        }
                        Some(v) => {
                            for (i, x) in v.iter().enumerate() {
                                values.push(*x);
                                defs.push(2);
                                reps.push(i16::from(i > 0));
                            }
                        }
                    }
                }
                col.typed::<FloatType>()
                    .write_batch(&values, Some(&defs), Some(&reps))?;
            }
        }
        col.close()?;
        column += 1;
    }
    group.close()?;
    Ok(())
}

/// One JSON object a line (the record as the records page shows it, with its embedding).
fn to_jsonl(rows: &[RecordRow]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in rows {
        // A record always serializes (strings, numbers and JSON values only).
        serde_json::to_writer(&mut out, r).expect("a record serializes");
        out.push(b'\n');
    }
    out
}

/// A ready dataset's records with their vectors, as a stream of encoded pages (the Parquet
/// footer last).
pub fn stream(
    pool: PgPool,
    dataset: DatasetRow,
    format: Format,
) -> anyhow::Result<impl Stream<Item = std::io::Result<Vec<u8>>> + Send + 'static> {
    let encoder = Encoder::new(
        format,
        to_jsonl,
        |sink| parquet_writer(&dataset, sink),
        write_row_group,
    )?;
    // A ready dataset's positions are 0..records (the build's count).
    let total = dataset
        .stats
        .as_ref()
        .and_then(|s| s["records"].as_i64())
        .unwrap_or(0);
    let dataset = Arc::new(dataset);
    Ok(crate::streamed_export::stream(
        encoder,
        total,
        PAGE,
        move |from| {
            let (pool, dataset) = (pool.clone(), dataset.clone());
            async move { records_from(&pool, &dataset, from, PAGE).await }
        },
    ))
}
