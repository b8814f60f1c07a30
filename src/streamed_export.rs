//! What the streamed exports (dataset records, scoring results) share: the byte sink a Parquet
//! writer fills between two pages, and the page-by-page stream that reads, encodes and sends.
use std::future::Future;
use std::io::Write;
use std::sync::{Arc, Mutex};

use futures::Stream;
use parquet::file::writer::SerializedFileWriter;

/// The bytes a Parquet writer has produced and the stream has not sent yet.
#[derive(Clone, Default)]
pub struct Pending(Arc<Mutex<Vec<u8>>>);

impl Pending {
    pub fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Write for Pending {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An export's file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jsonl,
    Parquet,
}

/// How an export encodes its pages: JSON Lines, or Parquet with a row group per page.
pub enum Encoder<R> {
    Jsonl(fn(&[R]) -> Vec<u8>),
    Parquet {
        writer: Box<SerializedFileWriter<Pending>>,
        sink: Pending,
        row_group: RowGroupWriter<R>,
    },
}

/// Writes one page of rows as the next row group.
pub type RowGroupWriter<R> = fn(&mut SerializedFileWriter<Pending>, &[R]) -> anyhow::Result<()>;

impl<R> Encoder<R> {
    /// The encoder of `format`: `lines` encodes a page as JSON Lines; `writer` opens the Parquet
    /// writer (schema and metadata) on the sink and `row_group` writes a page into it.
    pub fn new(
        format: Format,
        lines: fn(&[R]) -> Vec<u8>,
        writer: impl FnOnce(Pending) -> anyhow::Result<SerializedFileWriter<Pending>>,
        row_group: RowGroupWriter<R>,
    ) -> anyhow::Result<Encoder<R>> {
        Ok(match format {
            Format::Jsonl => Encoder::Jsonl(lines),
            Format::Parquet => {
                let sink = Pending::default();
                Encoder::Parquet {
                    writer: Box::new(writer(sink.clone())?),
                    sink,
                    row_group,
                }
            }
        })
    }

    /// The bytes of one page.
    fn page(&mut self, rows: &[R]) -> anyhow::Result<Vec<u8>> {
        match self {
            Encoder::Jsonl(lines) => Ok(lines(rows)),
            Encoder::Parquet {
                writer,
                sink,
                row_group,
            } => {
                row_group(writer, rows)?;
                Ok(sink.take())
            }
        }
    }

    /// The bytes after the last page (Parquet's footer).
    fn finish(self) -> anyhow::Result<Vec<u8>> {
        match self {
            Encoder::Jsonl(_) => Ok(Vec::new()),
            Encoder::Parquet { writer, sink, .. } => {
                writer.close()?;
                Ok(sink.take())
            }
        }
    }
}

/// Pages of `page` positions read by `read(from)` for `from` = 0, `page`, 2 × `page`, … below
/// `total` (positions are dense, so each read is one bounded index range), each encoded and
/// sent as soon as it is read, the encoder's tail last. A read or encoding error ends the
/// stream with that error, so a client sees a truncated transfer, never a file that looks
/// complete.
pub fn stream<R, F, Fut>(
    encoder: Encoder<R>,
    total: i64,
    page: i64,
    read: F,
) -> impl Stream<Item = std::io::Result<Vec<u8>>> + Send + 'static
where
    R: Send + 'static,
    F: Fn(i32) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<R>, sqlx::Error>> + Send + 'static,
{
    futures::stream::unfold(Some((0i64, encoder)), move |state| {
        let next = state.map(|(from, encoder)| {
            let read = (from < total).then(|| read(from as i32));
            (from, read, encoder)
        });
        async move {
            let (from, read, mut encoder) = next?;
            let Some(read) = read else {
                return Some((encoder.finish().map_err(std::io::Error::other), None));
            };
            let rows = match read.await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!("export stopped: {e}");
                    return Some((Err(std::io::Error::other(e)), None));
                }
            };
            let bytes = if rows.is_empty() {
                Ok(Vec::new())
            } else {
                encoder.page(&rows)
            };
            match bytes {
                Ok(bytes) => Some((Ok(bytes), Some((from + page, encoder)))),
                Err(e) => Some((Err(std::io::Error::other(e)), None)),
            }
        }
    })
}
