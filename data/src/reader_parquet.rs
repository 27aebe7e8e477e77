//! Parquet, read by record batches with only the known columns projected (a dataset's other columns, even
//! large ones, are never decoded). A directory of shards is handled by [`crate::source::open_dataset`].

use std::fs::File;
use std::path::Path;

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

use crate::arrow_value::select_columns;
use crate::error::{DataError, Result};
use crate::reader_arrow::BatchRows;
use crate::record::Row;

/// Rows per record batch: small enough that a batch of long conversations stays a few MB.
const BATCH_ROWS: usize = 256;

pub struct ParquetReader {
    rows: BatchRows,
}

impl ParquetReader {
    /// Opens `path`, reading only the columns named in `known`.
    pub fn open(path: &Path, known: &[&str]) -> Result<Self> {
        let pq_err = |source| DataError::Parquet { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(pq_err)?;
        let columns = select_columns(path, builder.schema(), known)?;
        // Arrow's top-level fields are the Parquet schema's root columns, in the same order.
        let mask = ProjectionMask::roots(builder.parquet_schema(), columns);
        let reader = builder.with_projection(mask).with_batch_size(BATCH_ROWS).build().map_err(pq_err)?;
        Ok(Self {
            rows: BatchRows::new(path, Box::new(reader), |path, e| DataError::Parquet { path, source: e.into() }),
        })
    }
}

impl Iterator for ParquetReader {
    type Item = Result<Row>;
    fn next(&mut self) -> Option<Result<Row>> {
        self.rows.next()
    }
}
