//! Arrow IPC: the file format (`ARROW1` magic, random access footer), the stream format, and the directory
//! `datasets.Dataset.save_to_disk` writes (`state.json` listing `data-*.arrow` shards, which are streams).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::error::ArrowError;
use arrow::ipc::reader::{FileReader, StreamReader};

use crate::arrow_value::{batch_to_rows, select_columns};
use crate::error::{DataError, Result};
use crate::record::Row;

type Batches = Box<dyn Iterator<Item = std::result::Result<RecordBatch, ArrowError>> + Send>;

/// Rows of an Arrow IPC file or stream, one record batch in memory at a time.
pub struct ArrowReader {
    rows: BatchRows,
}

impl ArrowReader {
    /// Opens `path`, reading only the columns named in `known`.
    pub fn open(path: &Path, known: &[&str]) -> Result<Self> {
        let arrow_err = |source| DataError::Arrow { path: path.to_path_buf(), source };
        let mut magic = [0u8; 6];
        let is_file_format = {
            let mut f = File::open(path).map_err(|e| DataError::io(path, e))?;
            f.read_exact(&mut magic).is_ok() && &magic == b"ARROW1"
        };
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        let batches: Batches = if is_file_format {
            let probe = FileReader::try_new(BufReader::new(file), None).map_err(arrow_err)?;
            let columns = select_columns(path, &probe.schema(), known)?;
            let file = File::open(path).map_err(|e| DataError::io(path, e))?;
            Box::new(FileReader::try_new(BufReader::new(file), Some(columns)).map_err(arrow_err)?)
        } else {
            let probe = StreamReader::try_new(BufReader::new(file), None).map_err(arrow_err)?;
            let columns = select_columns(path, &probe.schema(), known)?;
            let file = File::open(path).map_err(|e| DataError::io(path, e))?;
            Box::new(StreamReader::try_new(BufReader::new(file), Some(columns)).map_err(arrow_err)?)
        };
        Ok(Self { rows: BatchRows::new(path, batches, |path, source| DataError::Arrow { path, source }) })
    }
}

impl Iterator for ArrowReader {
    type Item = Result<Row>;
    fn next(&mut self) -> Option<Result<Row>> {
        self.rows.next()
    }
}

/// The data files of a `save_to_disk` directory, in the order `state.json` lists them.
pub(crate) fn save_to_disk_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| DataError::io(&state_path, e))?;
    let state: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| DataError::dataset(&state_path, format!("invalid json: {e}")))?;
    if state.get("_indices_data_files").is_some_and(|v| !v.is_null()) {
        return Err(DataError::dataset(
            &state_path,
            "has an indices mapping; save the dataset again after `flatten_indices()`",
        ));
    }
    let files = state
        .get("_data_files")
        .and_then(|v| v.as_array())
        .ok_or_else(|| DataError::dataset(&state_path, "missing `_data_files` list"))?;
    let mut out = Vec::with_capacity(files.len());
    for (i, f) in files.iter().enumerate() {
        let name = f
            .get("filename")
            .and_then(|v| v.as_str())
            .ok_or_else(|| DataError::dataset(&state_path, format!("`_data_files[{i}]` has no `filename`")))?;
        out.push(dir.join(name));
    }
    if out.is_empty() {
        return Err(DataError::dataset(&state_path, "lists no data files"));
    }
    Ok(out)
}

/// Turns a stream of record batches into a stream of rows, holding one converted batch at a time.
pub(crate) struct BatchRows {
    path: PathBuf,
    batches: Batches,
    to_error: fn(PathBuf, ArrowError) -> DataError,
    pending: VecDeque<Row>,
    next_row: u64,
    done: bool,
}

impl BatchRows {
    pub(crate) fn new(path: &Path, batches: Batches, to_error: fn(PathBuf, ArrowError) -> DataError) -> Self {
        Self { path: path.to_path_buf(), batches, to_error, pending: VecDeque::new(), next_row: 0, done: false }
    }
}

impl Iterator for BatchRows {
    type Item = Result<Row>;

    fn next(&mut self) -> Option<Result<Row>> {
        loop {
            if let Some(row) = self.pending.pop_front() {
                return Some(Ok(row));
            }
            if self.done {
                return None;
            }
            match self.batches.next() {
                None => self.done = true,
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err((self.to_error)(self.path.clone(), e)));
                }
                Some(Ok(batch)) => match batch_to_rows(&self.path, &batch, self.next_row) {
                    Ok(rows) => {
                        self.next_row += batch.num_rows() as u64;
                        self.pending = rows.into();
                    }
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                },
            }
        }
    }
}
