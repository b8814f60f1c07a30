//! A split's stored vectors for head training: held in memory up to a cap, beyond it spilled
//! to an unlinked temporary file and read back one batch of rows at a time, so a worker's
//! memory for a head run does not grow with the dataset.
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;

/// Row-major vectors of `dims` floats each.
pub struct VectorRows {
    dims: usize,
    rows: usize,
    /// Bytes of vectors kept in memory before the rows move to a file.
    memory_cap: usize,
    store: Store,
}

enum Store {
    Memory(Vec<f32>),
    /// Little-endian f32 rows; the writer is flushed (and dropped) by `finish`.
    File {
        file: File,
        writer: Option<BufWriter<File>>,
    },
}

impl VectorRows {
    /// Empty rows of `dims` floats; `memory_cap` bytes of them stay in memory.
    pub fn new(dims: usize, memory_cap: usize) -> VectorRows {
        VectorRows {
            dims,
            rows: 0,
            memory_cap,
            store: Store::Memory(Vec::new()),
        }
    }

    /// All in memory, whatever their size (small inputs built in code).
    pub fn from_flat(dims: usize, flat: Vec<f32>) -> VectorRows {
        VectorRows {
            dims,
            rows: flat.len() / dims.max(1),
            memory_cap: usize::MAX,
            store: Store::Memory(flat),
        }
    }

    pub fn dims(&self) -> usize {
        self.dims
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// True when the rows live in a file (they outgrew the memory cap).
    pub fn spilled(&self) -> bool {
        matches!(self.store, Store::File { .. })
    }

    /// The rows when they are all in memory.
    pub fn in_memory(&self) -> Option<&[f32]> {
        match &self.store {
            Store::Memory(flat) => Some(flat),
            Store::File { .. } => None,
        }
    }

    /// Appends one row (`dims` floats).
    pub fn push(&mut self, row: &[f32]) -> std::io::Result<()> {
        debug_assert_eq!(row.len(), self.dims);
        if let Store::Memory(flat) = &mut self.store {
            if (flat.len() + row.len()) * 4 > self.memory_cap {
                let file = tempfile::tempfile()?;
                let mut writer = BufWriter::with_capacity(1 << 20, file.try_clone()?);
                write_floats(&mut writer, flat)?;
                self.store = Store::File {
                    file,
                    writer: Some(writer),
                };
            }
        }
        match &mut self.store {
            Store::Memory(flat) => flat.extend_from_slice(row),
            Store::File { writer, .. } => {
                let writer = writer.as_mut().ok_or_else(|| {
                    std::io::Error::other("rows were pushed after they were finished")
                })?;
                write_floats(writer, row)?;
            }
        }
        self.rows += 1;
        Ok(())
    }

    /// Ends writing: a spilled store's buffered rows reach its file.
    pub fn finish(&mut self) -> std::io::Result<()> {
        if let Store::File { writer, .. } = &mut self.store {
            if let Some(mut w) = writer.take() {
                w.flush()?;
            }
        }
        Ok(())
    }

    /// The given rows, in the given order, as one row-major buffer.
    pub fn gather(&self, rows: &[usize]) -> std::io::Result<Vec<f32>> {
        let mut out = Vec::with_capacity(rows.len() * self.dims);
        match &self.store {
            Store::Memory(flat) => {
                for &r in rows {
                    out.extend_from_slice(&flat[r * self.dims..(r + 1) * self.dims]);
                }
            }
            Store::File { file, .. } => {
                let mut bytes = vec![0u8; self.dims * 4];
                for &r in rows {
                    file.read_exact_at(&mut bytes, (r * self.dims * 4) as u64)?;
                    out.extend(
                        bytes
                            .chunks_exact(4)
                            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                    );
                }
            }
        }
        Ok(out)
    }
}

fn write_floats(w: &mut impl Write, values: &[f32]) -> std::io::Result<()> {
    for v in values {
        w.write_all(&v.to_le_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spilled_rows_read_back_as_written() {
        let dims = 3;
        let rows: Vec<Vec<f32>> = (0..100)
            .map(|i| (0..dims).map(|j| (i * 10 + j) as f32 * 0.5).collect())
            .collect();
        let mut memory = VectorRows::new(dims, usize::MAX);
        let mut spilled = VectorRows::new(dims, 40 * 4 * dims);
        for r in &rows {
            memory.push(r).unwrap();
            spilled.push(r).unwrap();
        }
        memory.finish().unwrap();
        spilled.finish().unwrap();
        assert!(!memory.spilled());
        assert!(spilled.spilled());
        assert_eq!(spilled.len(), 100);
        let order = [99, 0, 41, 39, 40, 7];
        let expected: Vec<f32> = order.iter().flat_map(|&i| rows[i].clone()).collect();
        assert_eq!(memory.gather(&order).unwrap(), expected);
        assert_eq!(spilled.gather(&order).unwrap(), expected);
    }
}
